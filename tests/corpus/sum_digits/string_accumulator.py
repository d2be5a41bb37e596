def sum_digits(n):
    result = ""
    for ch in str(abs(n)):
        result += ch
    return result
