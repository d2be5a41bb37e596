def sum_digits(n, total):
    for ch in str(abs(n)):
        total += int(ch)
    return total
