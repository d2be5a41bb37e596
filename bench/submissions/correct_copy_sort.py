def median(numbers):
    if not numbers:
        raise ValueError("no numbers")
    copy = list(numbers)
    copy.sort()
    middle = len(copy) // 2
    if len(copy) % 2 == 0:
        return (copy[middle - 1] + copy[middle]) / 2
    return copy[middle]
