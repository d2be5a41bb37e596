import sys

scores = [float(line) for line in sys.stdin if line.strip()]
if not scores
    print("no scores")
else:
    print(f"count: {len(scores)}")
