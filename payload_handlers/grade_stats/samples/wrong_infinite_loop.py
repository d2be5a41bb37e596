import sys

scores = []
line = sys.stdin.readline()
while line:
    if line.strip():
        scores.append(float(line))
        line = sys.stdin.readline()   # only reads on after a score: a blank line loops forever
if not scores:
    print("no scores")
else:
    print(f"count: {len(scores)}")
    print(f"mean: {sum(scores) / len(scores):.2f}")
    print(f"min: {min(scores):g}")
    print(f"max: {max(scores):g}")
    print(f"passed: {sum(1 for s in scores if s >= 50)}")
