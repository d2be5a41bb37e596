def median(xs):
    if not xs:
        raise ValueError("empty")
    s = sorted(xs)
    n = len(s)
    if n % 2:
        return s[n // 2 + 1] if n > 1 else s[0]
    return (s[n // 2] + s[n // 2 + 1]) / 2 if n > 2 else (s[0] + s[1]) / 2
