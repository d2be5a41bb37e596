"""Hidden tests for the temperature notebook."""

import pytest

from submission import c_to_f, describe, f_to_c


@pytest.mark.parametrize("c, f", [(0, 32), (-40, -40), (37, 98.6), (-17.5, 0.5)])
def test_c_to_f(c, f):
    assert c_to_f(c) == pytest.approx(f)


@pytest.mark.parametrize("f, c", [(32, 0), (212, 100), (98.6, 37)])
def test_f_to_c(f, c):
    assert f_to_c(f) == pytest.approx(c)


def test_returns_float():
    assert type(c_to_f(10)) is float
    assert type(f_to_c(50)) is float


def test_round_trip():
    for c in range(-50, 51, 7):
        assert f_to_c(c_to_f(c)) == pytest.approx(c)


@pytest.mark.parametrize("c, word", [(-5, "freezing"), (0, "freezing"), (0.5, "cold"),
                                     (15, "mild"), (24.9, "mild"), (25, "hot")])
def test_describe(c, word):
    assert describe(c) == word
