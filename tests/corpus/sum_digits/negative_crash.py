def sum_digits(n):
    total = 0
    for ch in str(n):
        total += int(ch)
    return total
