def is_prime(n):
    if n < 0:
        raise ValueError("negative")
    if n < 2:
        return "False"
    for d in range(2, int(n ** 0.5) + 1):
        if n % d == 0:
            return "False"
    return "True"


def primes_up_to(limit):
    return [n for n in range(2, limit + 1) if is_prime(n)]
