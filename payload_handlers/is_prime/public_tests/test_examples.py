"""Checks students may see (and run themselves with pytest)."""

from submission import is_prime, primes_up_to


def test_seven_is_prime():
    assert is_prime(7) is True


def test_nine_is_not_prime():
    assert is_prime(9) is False


def test_primes_up_to_ten():
    assert primes_up_to(10) == [2, 3, 5, 7]
