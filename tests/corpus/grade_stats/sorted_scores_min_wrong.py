import sys

scores = [float(line) for line in sys.stdin if line.strip()]
if not scores:
    print("no scores")
else:
    ordered = sorted(scores)
    print(f"count: {len(scores)}")
    print(f"mean: {sum(scores) / len(scores):.2f}")
    print(f"min: {ordered[1]:g}")
    print(f"max: {ordered[-1]:g}")
    print(f"passed: {sum(1 for s in scores if s >= 50)}")
