# CANARY_TESTS_c02e55: hidden tests must never be readable by students.
import pytest

from submission import double

SECRET_NOTE = "CANARY_TESTS_c02e55"


@pytest.mark.parametrize("n", [1, 5, 21, -4])
def test_double(n):
    assert double(n) == 2 * n, SECRET_NOTE
