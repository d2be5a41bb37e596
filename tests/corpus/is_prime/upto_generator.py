def is_prime(n):
    if n < 0:
        raise ValueError("n must not be negative")
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True


def primes_up_to(limit):
    return (n for n in range(2, limit + 1) if is_prime(n))
