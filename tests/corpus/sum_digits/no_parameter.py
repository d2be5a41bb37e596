def sum_digits():
    n = 123
    total = 0
    for ch in str(n):
        total += int(ch)
    return total
