def median(xs):
    if not xs:
        raise ValueError("empty")
    xs.sort()
    n = len(xs)
    if n % 2:
        return xs[n // 2]
    return (xs[n // 2 - 1] + xs[n // 2]) / 2
