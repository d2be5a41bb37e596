"""Mutation testing: the generator's operators (exact text, one change,
precedence kept, docstrings and main guards left alone) and `xgrader
mutants` / `check --mutants` graded for real in the bwrap sandbox."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xgrader.mutation import OPERATORS, generate, mutants_for
from xgrader.mutation.run import MutantStatus, classify
from xgrader import report as rp

ROOT = Path(__file__).resolve().parent.parent
LOOP = ROOT / "examples" / "author_loop"

SOURCE = textwrap.dedent('''\
    """Module docstring: never mutated."""
    LIMIT = 10  # a comment that must survive


    def clamp(x, lo, hi):
        """Docstring."""
        if x < lo:
            return lo
        while x > hi and not False:
            x = x - 1
        total = sum(range(1, x))
        print(x, lo)
        return x * 2


    if __name__ == "__main__":
        clamp(1, 2, 3)
    ''')


def by_op(op: str) -> list:
    return generate(SOURCE, "m.py", [op])


def changed_lines(m) -> list[tuple[str, str]]:
    before, after = m.original.splitlines(), m.source.splitlines()
    if len(before) != len(after):
        return [("<lines>", "<lines>")]
    return [(a, b) for a, b in zip(before, after) if a != b]


def test_every_operator_makes_valid_single_change_mutants():
    mutants = generate(SOURCE, "m.py")
    assert {m.operator for m in mutants} == set(OPERATORS)
    for m in mutants:
        ast.parse(m.source)
        assert m.source != m.original
        assert "# a comment that must survive" in m.source
        assert m.diff().startswith("--- a/m.py\n+++ b/m.py\n")
        assert f"{m.line}" and m.id.startswith("m")
        if m.operator != "delete":
            assert len(changed_lines(m)) == 1, (m.header(), changed_lines(m))
    assert len({m.source for m in mutants}) == len(mutants)          # no duplicates
    assert [m.id for m in mutants] == [f"m{i:03d}" for i in range(1, len(mutants) + 1)]


def test_operator_details():
    compares = {changed_lines(m)[0][1].strip() for m in by_op("compare")}
    assert {"if x <= lo:", "if x > lo:", "while x >= hi and (not False):", "while x < hi and (not False):"} \
        <= compares | {c.replace("(not False)", "not False") for c in compares} or compares
    assert any("x = x + 1" in m.source for m in by_op("arith"))
    assert any("return x / 2" in m.source for m in by_op("arith"))
    assert any("x > hi or not False" in m.source for m in by_op("bool"))
    assert any("while x > hi and False:" in m.source for m in by_op("bool"))   # not x -> x
    consts = [changed_lines(m)[0][1] for m in by_op("const")]
    assert "LIMIT = 11  # a comment that must survive" in consts and "    return x * 1" in consts
    ranges = {changed_lines(m)[0][1].strip() for m in by_op("range")}
    assert ranges == {"total = sum(range(1, x + 1))", "total = sum(range(1, x - 1))",
                      "total = sum(range(1 + 1, x))", "total = sum(range(1 - 1, x))"}
    assert any("if not x < lo:" in m.source for m in by_op("negate"))
    assert any("while not (x > hi and (not False)):" in m.source or "while not (x > hi and not False):" in m.source
               for m in by_op("negate"))
    deleted = [m for m in by_op("delete")]
    assert any("    pass\n    total" in m.source for m in deleted)     # the while loop, whole
    assert not any("Docstring" not in m.source for m in deleted)             # docstrings stay
    nones = [changed_lines(m)[0][1].strip() for m in by_op("return_none")]
    assert nones == ["return None", "return None"]
    swaps = [changed_lines(m)[0][1].strip() for m in by_op("swap_args")]
    assert "print(lo, x)" in swaps and "total = sum(range(x, 1))" in swaps
    assert not any("clamp(2, 1, 3)" in m.source for m in generate(SOURCE, "m.py"))   # main guard untouched


def test_precedence_is_kept():
    src = "def f(a, b, c):\n    return a * b + c\n"
    for m in generate(src, "p.py", ["arith"]):
        tree = ast.parse(m.source)
        ret = tree.body[0].body[0].value
        assert isinstance(ret, ast.BinOp)   # still (a ? b) ? c or a ? (b ? c) as intended, never re-associated
    sub = [m.source for m in generate("def g(a, b):\n    return not a == b\n", "q.py", ["compare"])]
    assert "def g(a, b):\n    return not a != b\n" in sub


def test_mutants_for_numbers_across_files_and_skips_non_python():
    files = {"a.py": b"def f():\n    return 1\n", "b.py": b"def g(x):\n    return x < 2\n",
             "data.txt": b"1 < 2", "broken.py": b"def (:\n"}
    mutants = mutants_for(files)
    assert {m.file for m in mutants} == {"a.py", "b.py"}
    assert [m.id for m in mutants] == [f"m{i:03d}" for i in range(1, len(mutants) + 1)]
    m = mutants[-1]
    assert m.files(files)[m.file] == m.source.encode() and m.files(files)["data.txt"] == b"1 < 2"
    with pytest.raises(ValueError, match="unknown mutation operators"):
        generate("x = 1\n", "x.py", ["nope"])


def _report(outcome, statuses: list, score: float) -> rp.GradeReport:
    return rp.GradeReport(assignment="a", outcome=outcome, score=score, max_score=2,
                       tests=[rp.TestReport(name=f"t{i}", status=s) for i, s in enumerate(statuses)])


def test_classification():
    assert classify(_report(rp.Outcome.passed, [rp.TestStatus.passed] * 2, 2))[0] is MutantStatus.survived
    assert classify(_report(rp.Outcome.partial, [rp.TestStatus.passed, rp.TestStatus.failed], 1)) == (
        MutantStatus.killed, ["t1"])
    assert classify(_report(rp.Outcome.time_limit, [rp.TestStatus.passed, rp.TestStatus.timeout], 1))[0] is MutantStatus.timeout
    assert classify(_report(rp.Outcome.partial, [rp.TestStatus.failed, rp.TestStatus.timeout], 0))[0] is MutantStatus.killed
    assert classify(_report(rp.Outcome.syntax_error, [rp.TestStatus.missing] * 2, 0))[0] is MutantStatus.load_error
    assert classify(_report(rp.Outcome.runtime_error, [rp.TestStatus.missing] * 2, 0))[0] is MutantStatus.load_error


def xgrader(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xgrader", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_mutants_find_the_weak_tests_and_the_fix_kills_them(tmp_path):
    handlers = tmp_path / "handlers"
    shutil.copytree(LOOP / "handlers", handlers)
    weak = xgrader("mutants", "--handlers", str(handlers), "--sandbox", "bwrap", "letter_grade", "--json")
    assert weak.returncode == 0, weak.stderr
    import json

    report = json.loads(weak.stdout)
    survived = [r for r in report["results"] if r["status"] == "survived"]
    boundary = [r for r in survived if r["operator"] == "compare" and r["description"] == "`>=` -> `>`"]
    assert len(boundary) == 4, [r["description"] for r in survived]      # one per grade boundary
    first = min(boundary, key=lambda r: r["line"])
    assert first["line"] == 5 and "-    if score >= 90:\n+    if score > 90:" in first["diff"]
    assert report["score"] < 0.8

    text = xgrader("mutants", "--handlers", str(handlers), "--sandbox", "bwrap", "letter_grade")
    assert "SURVIVED" in text.stdout and "submission.py:5 compare: `>=` -> `>`" in text.stdout
    below = xgrader("check", "--handlers", str(handlers), "--sandbox", "bwrap", "--mutants", "letter_grade")
    assert below.returncode == 1

    shutil.copy(LOOP / "fixed" / "test_letter_grade.py", handlers / "letter_grade" / "tests" / "test_letter_grade.py")
    fixed = xgrader("mutants", "--handlers", str(handlers), "--sandbox", "bwrap", "letter_grade", "--json",
                    "--min-score", "0.8")
    assert fixed.returncode == 0, fixed.stdout[-2000:]
    after = json.loads(fixed.stdout[:fixed.stdout.rindex("}") + 1])
    assert after["score"] >= 0.8
    assert not [r for r in after["results"] if r["status"] == "survived" and r["description"] == "`>=` -> `>`"]


@pytest.mark.slow
def test_is_prime_hangs_count_as_killed_and_are_reported_apart(tmp_path):
    out = xgrader("mutants", "--sandbox", "bwrap", "is_prime", "--operators", "const,delete", "--all")
    assert out.returncode == 0, out.stderr
    assert "timed out (counted as killed" in out.stdout
    lines = [line for line in out.stdout.splitlines() if line.startswith("timeout")]
    assert any("`divisor += 1`" in line for line in lines), out.stdout    # the infinite loop
    assert any("`1` -> `0`" in line for line in lines)


def test_written_mutants_load_as_a_mutation_assignments_mutants(tmp_path):
    """`xgrader mutants --write` leaves the layout a mutation assignment's
    mutants/ folder takes: folders with MUTANT.txt notes, and mutants.toml."""
    from xgrader.assignment import load_assignment
    from xgrader.cli.mutants import write_mutants

    src = ROOT / "payload_handlers" / "leap_year_tests"
    copy = tmp_path / "leap_year_tests"
    shutil.copytree(src, copy)
    solution = {p.relative_to(copy / "solution").as_posix(): p.read_bytes()
                for p in (copy / "solution").rglob("*.py")}
    mutants = mutants_for(solution, ["compare"])
    assert mutants
    shutil.rmtree(copy / "mutants")
    write_mutants(copy / "mutants", mutants[:3])
    assignment = load_assignment(copy, "leap_year_tests")
    assert [m.name for m in assignment.mutants] == [f"{m.id}_compare_line{m.line}" for m in mutants[:3]]
    assert all(m.files for m in assignment.mutants)
    out = xgrader("mutants", "--handlers", str(tmp_path), "leap_year_tests")
    assert out.returncode == 2 and "pytest and io kinds" in out.stderr
