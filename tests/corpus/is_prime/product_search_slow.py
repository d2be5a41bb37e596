def is_prime(n):
    if n < 0:
        raise ValueError("negative")
    if n < 2:
        return False
    # n is composite if two numbers multiply to it
    for a in range(2, n):
        for b in range(2, n):
            if a * b == n:
                return False
    return True


def primes_up_to(limit):
    return [n for n in range(2, limit + 1) if is_prime(n)]
