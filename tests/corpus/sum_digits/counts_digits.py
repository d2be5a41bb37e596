def sum_digits(n):
    count = 0
    for ch in str(abs(n)):
        count += 1
    return count
