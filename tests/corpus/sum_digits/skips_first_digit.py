def sum_digits(n):
    s = str(abs(n))
    total = 0
    for i in range(1, len(s)):
        total += int(s[i])
    return total
