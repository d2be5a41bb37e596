"""The mutation kind's CPU per submission: 20 mutants x a 10-test student suite.

    python -m bench.mutation [--rounds 5]

Rows, alternated round by round (A, B, A, B...: the machine's load hits both
alike):

- ``xgrader mutation (bwrap)``: `Grader.grade` of the submission: 22 runs
  (20 mutants, the reference twice), each a test sandbox forked from the
  fork server that has pytest imported plus an implementation sandbox
  forked from the runner's, and the host relaying every call;
- ``bare pytest per run (floor)``: what a grader without sandboxes does: one
  `python3 -m pytest -q -p no:cacheprovider` per implementation (22), the
  implementation and the tests in one folder, on the host.

CPU is this process and every descendant (bench.grading.CpuMeter: a cpuacct
cgroup of its own when writable, so sandbox processes count). Target: at most
2 s of CPU per submission. Figures taken while other work loads the machine
vary: compare the two rows of the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from bench.grading import CpuMeter

REFERENCE = textwrap.dedent("""
    def clamp(x, lo, hi):
        if x < lo:
            return lo
        if x > hi:
            return hi
        return x


    def mean(xs):
        if not xs:
            raise ValueError("empty")
        return sum(xs) / len(xs)


    def count_vowels(text):
        return sum(1 for c in text.lower() if c in "aeiou")


    def fizz(n):
        if n % 15 == 0:
            return "FizzBuzz"
        if n % 3 == 0:
            return "Fizz"
        if n % 5 == 0:
            return "Buzz"
        return str(n)


    def last(xs, k):
        return xs[len(xs) - k:]
""").lstrip()

SWAPS = [
    ("if x < lo:", "if x <= lo:"), ("return lo", "return lo + 1"), ("if x > hi:", "if x >= hi + 1:"),
    ("return hi", "return x"), ("if not xs:", "if xs is None:"), ("sum(xs) / len(xs)", "sum(xs) // len(xs)"),
    ("sum(xs) / len(xs)", "sum(xs) / (len(xs) + 1)"), ('in "aeiou"', 'in "aeio"'), ("text.lower()", "text"),
    ("sum(1 for", "sum(2 for"), ("n % 15 == 0", "n % 5 == 0"), ('"FizzBuzz"', '"Fizz"'),
    ("n % 3 == 0", "n % 3 == 1"), ('"Buzz"', '"buzz"'), ("return str(n)", "return n"),
    ("xs[len(xs) - k:]", "xs[len(xs) - k - 1:]"), ("xs[len(xs) - k:]", "xs[-k:]"),
    ('raise ValueError("empty")', "return 0"), ("if n % 5 == 0:", "if n % 10 == 0:"),
    ("return x\n", "return lo\n"),
]

SUITE = textwrap.dedent("""
    import pytest
    from funcs import clamp, count_vowels, fizz, last, mean

    def test_clamp_low():
        assert clamp(-1, 0, 10) == 0

    def test_clamp_high():
        assert clamp(11, 0, 10) == 10

    def test_clamp_mid():
        assert clamp(5, 0, 10) == 5 and clamp(0, 0, 10) == 0

    def test_mean():
        assert mean([1, 2, 4]) == pytest.approx(7 / 3)

    def test_mean_empty():
        with pytest.raises(ValueError):
            mean([])

    def test_vowels():
        assert count_vowels("Education") == 5

    def test_fizz():
        assert [fizz(n) for n in (3, 5, 15, 7, 10)] == ["Fizz", "Buzz", "FizzBuzz", "7", "Buzz"]

    def test_fizz_four():
        assert fizz(4) == "4"

    def test_last():
        assert last([1, 2, 3, 4], 2) == [3, 4]

    def test_last_zero():
        assert last([1, 2], 0) == []
""").lstrip()


def make_assignment(root: Path) -> None:
    folder = root / "mut20"
    (folder / "solution").mkdir(parents=True)
    (folder / "mutants").mkdir()
    (folder / "assignment.toml").write_text(
        'title = "bench"\nkind = "mutation"\nentry = "test_funcs.py"\nmodule = "funcs"\n'
        'test_timeout_s = 2\n[limits]\nwall_s = 10\n[mutation]\nmin_tests = 1\n')
    (folder / "solution" / "funcs.py").write_text(REFERENCE)
    for i, (old, new) in enumerate(SWAPS, 1):
        assert REFERENCE.count(old) >= 1, old
        (folder / "mutants" / f"m{i:02d}.py").write_text(REFERENCE.replace(old, new, 1))


def bare_runs(folder: Path, python: str) -> None:
    impls = [REFERENCE, REFERENCE] + [REFERENCE.replace(o, n, 1) for o, n in SWAPS]
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "test_funcs.py").write_text(SUITE)
        for source in impls:
            (Path(work) / "funcs.py").write_text(source)
            subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", work],
                           cwd=work, capture_output=True, env={"PATH": os.environ.get("PATH", ""),
                                                                "PYTHONDONTWRITEBYTECODE": "1"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    from xgrader.backends import make_backend
    from xgrader.config import Settings
    from xgrader.grading import Grader
    from xgrader.handlers.expected import ExpectedStore
    from xgrader.job import GradeRequest

    # First: the backend's job cgroups (and its fork servers) nest in the meter's.
    meter = CpuMeter()
    root = Path(tempfile.mkdtemp(prefix="xgbench-mutation-"))
    make_assignment(root)
    settings = Settings(handlers=root, sandbox="bwrap")
    backend = make_backend(settings)
    backend.prepare()
    grader = Grader(settings, backend, store=ExpectedStore(root / "cache", runner_dir=settings.runner_dir))
    request = GradeRequest(grader="mut20", student_response=SUITE, submission_id="bench")
    first = grader.grade(request)   # warm: loads, reference names, fork servers
    print(f"warm-up: {first.score:g}/{first.max_score:g} ({first.explanations[0].title})")
    rows: dict[str, list[float]] = {"xgrader mutation (bwrap)": [], "bare pytest per run (floor)": []}
    try:
        for _ in range(args.rounds):
            before = meter.seconds()
            grader.grade(request)
            rows["xgrader mutation (bwrap)"].append(meter.seconds() - before)
            before = meter.seconds()
            bare_runs(root, str(settings.sandbox_python))
            rows["bare pytest per run (floor)"].append(meter.seconds() - before)
    finally:
        star = "" if meter.exact else " * (this process and reaped children only: sandbox jobs missed)"
        backend.close()
        meter.close()
    floor = statistics.median(rows["bare pytest per run (floor)"])
    print(f"\nCPU seconds per submission (20 mutants x 10 tests, 22 runs), median of {args.rounds} "
          f"alternated rounds{star}")
    for name, values in rows.items():
        med = statistics.median(values)
        print(f"  {name:<30} {med:6.2f} s  (min {min(values):.2f}, max {max(values):.2f})"
              f"  ratio to floor {med / floor:4.2f}  ratio to 2 s target {med / 2.0:4.2f}")
    print(f"  load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
