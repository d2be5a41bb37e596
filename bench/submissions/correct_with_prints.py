def median(xs):
    print("computing median of", len(xs), "numbers")
    if xs == []:
        raise ValueError("empty")
    s = sorted(xs)
    k = len(s)
    return s[k // 2] if k % 2 else (s[k // 2 - 1] + s[k // 2]) / 2


print(median([1, 2, 3]))
