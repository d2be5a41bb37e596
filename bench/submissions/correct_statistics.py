import statistics


def median(xs):
    return statistics.median(xs) if xs else (_ for _ in ()).throw(ValueError("empty list"))
