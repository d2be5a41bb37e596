def sum_digits(n):
    total = 0
    while n != 0:         # -45 // 10 == -5, ... -1 // 10 == -1: never 0
        total += n % 10
        n = n // 10
    return total
