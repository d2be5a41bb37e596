def sum_digits(n):
    n = abs(n)
    total = 0
    while n > 9:          # stops before adding the first digit
        total += n % 10
        n //= 10
    return total
