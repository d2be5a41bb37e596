def is_prime(n):
    if n < 2:
        print(False)
        return
    for d in range(2, n):
        if n % d == 0:
            print(False)
            return
    print(True)


def primes_up_to(limit):
    primes = []
    for n in range(2, limit + 1):
        if is_prime(n):
            primes.append(n)
    return primes
