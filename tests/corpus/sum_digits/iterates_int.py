def sum_digits(n):
    total = 0
    for digit in n:
        total += digit
    return total
