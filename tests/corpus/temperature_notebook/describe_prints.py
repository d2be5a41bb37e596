def c_to_f(c):
    return c * 9 / 5 + 32


def f_to_c(f):
    return (f - 32) * 5 / 9


def describe(c):
    if c <= 0:
        print("freezing")
    if c < 15:
        print("cold")
    if c < 25:
        print("mild")
    print("hot")
