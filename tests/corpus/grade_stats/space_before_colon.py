import sys

scores = [float(line) for line in sys.stdin if line.strip()]
if not scores:
    print("no scores")
else:
    print("count :", len(scores))
    print("mean :", f"{sum(scores) / len(scores):.2f}")
    print("min :", f"{min(scores):g}")
    print("max :", f"{max(scores):g}")
    print("passed :", sum(1 for s in scores if s >= 50))
