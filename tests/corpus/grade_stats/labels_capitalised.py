import sys

scores = [float(line) for line in sys.stdin if line.strip()]
if not scores:
    print("No scores")
else:
    print(f"Count: {len(scores)}")
    print(f"Mean: {sum(scores) / len(scores):.2f}")
    print(f"Min: {min(scores):g}")
    print(f"Max: {max(scores):g}")
    print(f"Passed: {sum(1 for s in scores if s >= 50)}")
