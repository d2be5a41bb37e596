"""Hidden tests for is_prime / primes_up_to (never enter the student's sandbox)."""

import pytest

from submission import is_prime, primes_up_to


@pytest.fixture
def primes_below_100():
    return [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47,
            53, 59, 61, 67, 71, 73, 79, 83, 89, 97]


@pytest.mark.parametrize("n", [2, 3, 13])
def test_small_primes(n):
    assert is_prime(n) is True


@pytest.mark.parametrize("n", [4, 6, 15])
def test_small_composites(n):
    assert is_prime(n) is False


def test_zero_and_one():
    assert is_prime(0) is False
    assert is_prime(1) is False


def test_squares_of_primes():
    # the classic off-by-one: stopping before the square root
    for n in (25, 49, 121, 169):
        assert is_prime(n) is False, n


def test_negative_raises():
    with pytest.raises(ValueError):
        is_prime(-7)


def test_returns_bool():
    assert is_prime(11) is True
    assert is_prime(12) is False


def test_large_prime():
    assert is_prime(1_000_003) is True


def test_first_hundred(primes_below_100):
    assert [n for n in range(100) if is_prime(n)] == primes_below_100


def test_primes_up_to_includes_limit():
    assert primes_up_to(13) == [2, 3, 5, 7, 11, 13]


def test_primes_up_to_nothing():
    assert primes_up_to(1) == []
