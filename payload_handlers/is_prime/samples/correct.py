def is_prime(n):
    """True if n is a prime number."""
    if n < 0:
        raise ValueError("n must not be negative")
    if n < 2:
        return False
    divisor = 2
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 1
    return True


def primes_up_to(limit):
    """All primes p with 2 <= p <= limit, in increasing order."""
    return [n for n in range(2, limit + 1) if is_prime(n)]
