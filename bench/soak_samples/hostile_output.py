def clamp(x, lo, hi):
    if x < lo:
        while True:
            print("x" * 100000)
    return max(lo, min(x, hi))
