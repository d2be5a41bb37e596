def sum_digits(n):
    total = 0
    for ch in str(abs(n)):
        total += int(ch)
        return total
