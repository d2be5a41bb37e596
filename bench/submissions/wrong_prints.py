def median(xs):
    s = sorted(xs)
    n = len(s)
    if n % 2:
        print(s[n // 2])
    else:
        print((s[n // 2 - 1] + s[n // 2]) / 2)
