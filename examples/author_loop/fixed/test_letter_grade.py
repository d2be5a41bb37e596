"""Hidden tests for letter_grade, with the boundaries: each band's lowest
score, the highest score below it, and the ends of the valid range."""

import pytest

from submission import letter_grade


def test_examples():
    assert letter_grade(95) == "A"
    assert letter_grade(85) == "B"


def test_every_letter():
    assert [letter_grade(s) for s in (97, 84, 75, 66, 30)] == ["A", "B", "C", "D", "F"]


@pytest.mark.parametrize("score, letter", [(90, "A"), (89, "B"), (80, "B"), (79, "C"), (70, "C"),
                                           (69, "D"), (60, "D"), (59, "F"), (0, "F"), (100, "A")])
def test_boundaries(score, letter):
    assert letter_grade(score) == letter


def test_invalid_scores_raise():
    for bad in (-5, -1, 101, 150):
        with pytest.raises(ValueError):
            letter_grade(bad)
