def sum_digits(n):
    n = abs(n)
    return n % 10 + sum_digits(n // 10)
