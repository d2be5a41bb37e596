def sum_digits(n):
    total = sum(int(ch) for ch in str(abs(n)))
    return total,
