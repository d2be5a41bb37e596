def sumDigits(n):
    return sum(int(ch) for ch in str(abs(n)))
