def sum_digits(n):
    n = abs(n)
    totl = 0
    while n > 0:
        totl += n % 10
        n //= 10
    return total
