import pytest

from submission import c_to_f, describe


def test_boiling_point():
    assert c_to_f(100) == pytest.approx(212.0)


def test_describe_mild():
    assert describe(20) == "mild"
