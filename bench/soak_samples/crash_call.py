def clamp(x, lo, hi):
    scale = (x - lo) / (hi - lo)
    if scale < 0:
        return lo
    if scale > 1:
        return hi
    return x if x != 0 else lo / 0
