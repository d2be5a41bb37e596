# CANARY_TESTS_c02e55: hidden tests must never be readable by students.
import pytest

from submission import double

SECRET_NOTE = "CANARY_TESTS_c02e55"


@pytest.mark.parametrize("n", [1, 5, 21, -4])
def test_returns(n):
    assert double(n) == 2 * n, SECRET_NOTE


@pytest.mark.parametrize("n", [1, 5, 21, -4])
def test_prints(n, student_output):
    double(n)
    assert student_output.last.out == f"{2 * n}\n", SECRET_NOTE
