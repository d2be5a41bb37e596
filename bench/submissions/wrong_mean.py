def median(xs):
    return sum(xs) / len(xs)
