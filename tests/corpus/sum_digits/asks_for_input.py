def sum_digits(n):
    n = int(input("Enter a number: "))
    total = 0
    for ch in str(abs(n)):
        total += int(ch)
    return total
