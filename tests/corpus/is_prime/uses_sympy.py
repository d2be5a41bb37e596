from sympy import isprime


def is_prime(n):
    if n < 0:
        raise ValueError("negative")
    return isprime(n)


def primes_up_to(limit):
    return [n for n in range(2, limit + 1) if is_prime(n)]
