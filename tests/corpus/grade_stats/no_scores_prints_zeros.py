import sys

scores = [float(line) for line in sys.stdin if line.strip()]
count = len(scores)
mean = sum(scores) / count if count else 0
print(f"count: {count}")
print(f"mean: {mean:.2f}")
print(f"min: {min(scores) if scores else 0:g}")
print(f"max: {max(scores) if scores else 0:g}")
print(f"passed: {sum(1 for s in scores if s >= 50)}")
