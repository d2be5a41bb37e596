def sum_digits(n):
    digits = [int(c) for c in str(abs(n))]
    return f"{sum(digits)}"
