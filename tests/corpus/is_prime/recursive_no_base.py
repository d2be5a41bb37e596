def has_divisor(n, d):
    if n % d == 0:
        return True
    return has_divisor(n, d + 1)


def is_prime(n):
    if n < 0:
        raise ValueError("negative")
    if n < 2:
        return False
    return not has_divisor(n, 2)


def primes_up_to(limit):
    return [n for n in range(2, limit + 1) if is_prime(n)]
