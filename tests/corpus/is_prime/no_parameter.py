def is_prime():
    n = 7
    for d in range(2, n):
        if n % d == 0:
            return False
    return True


def primes_up_to(limit):
    return [n for n in range(2, limit + 1) if is_prime(n)]
