def median(xs):
    if len(xs) <= 2:
        return sum(xs) / len(xs)
    s = sorted(xs)
    return median(s[1:-1])
