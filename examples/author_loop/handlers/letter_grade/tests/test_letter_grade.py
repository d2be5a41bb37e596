"""Hidden tests for letter_grade: deliberately weak (every score sits in the
middle of its band; none is on a boundary)."""

import pytest

from submission import letter_grade


def test_examples():
    assert letter_grade(95) == "A"
    assert letter_grade(85) == "B"


def test_every_letter():
    assert [letter_grade(s) for s in (97, 84, 75, 66, 30)] == ["A", "B", "C", "D", "F"]


def test_invalid_scores_raise():
    for bad in (-5, 150):
        with pytest.raises(ValueError):
            letter_grade(bad)
