scores = []
while True:
    try:
        line = input()
    except EOFError:
        break
    if line.strip():
        scores.append(int(float(line)))
if len(scores) == 0:
    print("no scores")
else:
    print("count:", len(scores))
    print("mean:", sum(scores) // len(scores))
    print("min:", min(scores))
    print("max:", max(scores))
    passed = 0
    for s in scores:
        if s >= 50:
            passed = passed + 1
    print("passed:", passed)
