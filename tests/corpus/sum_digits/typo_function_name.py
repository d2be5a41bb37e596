def sum_digit(n):
    total = 0
    for ch in str(abs(n)):
        total += int(ch)
    return total
