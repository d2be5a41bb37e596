def is_prime(n):
    if n < 0:
        raise ValueError("negative")
    if n < 2:
        return False
    if n == 2:
        return True
    return n % 2 != 0


def primes_up_to(limit):
    return [n for n in range(2, limit + 1) if is_prime(n)]
