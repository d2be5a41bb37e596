def sum_digits(n):
    total = 0
    for digit in str(abs(n)):
        total += int(digt)
    return total
