total = 0


def sum_digits(n):
    global total
    for ch in str(abs(n)):
        total += int(ch)
    return total
