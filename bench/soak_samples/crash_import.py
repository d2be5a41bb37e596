LIMITS = {"lo": 0}
HIGH = LIMITS["hi"]


def clamp(x, lo, hi):
    return max(lo, min(x, hi))
