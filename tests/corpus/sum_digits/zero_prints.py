def sum_digits(n):
    n = abs(n)
    if n == 0:
        print(0)
        return
    total = 0
    while n > 0:
        total += n % 10
        n //= 10
    return total
