def median(xs):
    if len(xs) < 1:
        raise ValueError("median of nothing")
    items = []
    for x in xs:
        items.append(x)
    # simple selection sort, like in class
    for i in range(len(items)):
        smallest = i
        for j in range(i + 1, len(items)):
            if items[j] < items[smallest]:
                smallest = j
        items[i], items[smallest] = items[smallest], items[i]
    half = len(items) // 2
    if len(items) % 2 == 1:
        return items[half]
    return (items[half - 1] + items[half]) / 2
