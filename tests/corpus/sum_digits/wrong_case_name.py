def Sum_Digits(n):
    """Sum of digits"""
    n = abs(n)
    s = 0
    while n:
        s = s + n % 10
        n = n // 10
    return s
