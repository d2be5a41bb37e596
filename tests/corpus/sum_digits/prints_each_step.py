def sum_digits(n):
    total = 0
    for ch in str(abs(n)):
        total = total + int(ch)
        print("total so far:", total)
