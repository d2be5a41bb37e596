import sys

text = sys.stdin.read()
scores = [float(x) for x in text.split(",") if x.strip()]
if not scores:
    print("no scores")
else:
    print(f"count: {len(scores)}")
    print(f"mean: {sum(scores) / len(scores):.2f}")
    print(f"min: {min(scores):g}")
    print(f"max: {max(scores):g}")
    print(f"passed: {sum(1 for s in scores if s >= 50)}")
