def sum_digits(n):
    n = abs(n)
    total = 0
    for i in range(len(n)):
        total += n % 10
        n //= 10
    return total
