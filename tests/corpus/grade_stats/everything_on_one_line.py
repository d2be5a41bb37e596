import sys

scores = [float(line) for line in sys.stdin if line.strip()]
if not scores:
    print("no scores")
else:
    print(f"count: {len(scores)},", f"mean: {sum(scores) / len(scores):.2f},", f"min: {min(scores):g},",
          f"max: {max(scores):g},", f"passed: {sum(1 for s in scores if s >= 50)}")
