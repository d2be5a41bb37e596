import sys

scores = []
for line in sys.stdin.read().split("\n"):
    scores.append(float(line))
if not scores:
    print("no scores")
else:
    print(f"count: {len(scores)}")
    print(f"mean: {sum(scores) / len(scores):.2f}")
    print(f"min: {min(scores):g}")
    print(f"max: {max(scores):g}")
    print(f"passed: {sum(1 for s in scores if s >= 50)}")
