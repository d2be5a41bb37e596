def clamp(x, lo, hi):
    # steps towards the range one unit at a time: never ends for floats out of range
    while x < lo or x > hi:
        x = x + 1 if x < lo else x - 1
        if isinstance(x, float):
            x = x + 0.0
            x = x if x < lo or x > hi else x * 1000
    return x
