def sum_digits(n):
    digits = []
    for ch in str(abs(n)):
        digits.append(int(ch))
    return digits
