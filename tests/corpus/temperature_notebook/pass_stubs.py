def c_to_f(c):
    pass


def f_to_c(f):
    pass


def describe(c):
    pass
