def sum_digits(n):
    # join the digits with + and let Python add them up
    return eval("+".join(str(abs(n))))
