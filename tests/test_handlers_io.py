"""The io kind on the real bwrap backend: every verdict path of expression and
program cases, comparison modes, expected values computed once."""

from __future__ import annotations

import pytest

from tests.support.grading import GradingKit, write_assignment
from xgrader.dispatch import resolve
from xgrader.handlers.expected import ExpectedStore
from xgrader.report import Outcome
from xgrader.report import TestStatus as Status

PRIMES_SOLUTION = """
def is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True
"""
NUMBERS = [1, 2, 3, 4, 5, 7, 9, 11, 25, 97, 1_000_003]


def primes_cases() -> str:
    return "".join(f'[[case]]\nexpr = "is_prime({n})"\nvisible = {str(n < 5).lower()}\n\n' for n in NUMBERS)


@pytest.fixture(scope="module")
def io_kit(kit: GradingKit) -> GradingKit:
    kit.add("primes", {
        "assignment.toml": """
            title = "Primes"
            kind = "io"
            max_points = 11
            functions = ["is_prime"]
            test_timeout_s = 0.5
            [limits]
            memory_mb = 96
            wall_s = 6
        """,
        "tests/cases.toml": primes_cases(),
        "solution/submission.py": PRIMES_SOLUTION,
    })
    kit.add("modes", {
        "assignment.toml": 'title = "Modes"\nkind = "io"\nmax_points = 6\n',
        "tests/cases.toml": """
            [[case]]
            name = "area"
            expr = "area(1.0)"
            compare = { mode = "numeric", rel_tol = 1e-3 }
            visible = true
            [[case]]
            name = "greeting"
            expr = "greet('Ada')"
            check = "output"
            visible = true
            [[case]]
            name = "words"
            expr = "words()"
            expected = "\\\\['b', 'a'.*"
            compare = { mode = "regex" }
            [[case]]
            name = "lines"
            expr = "lines()"
            check = "output"
            compare = { mode = "unordered_lines" }
            [[case]]
            name = "literal"
            expr = "pair()"
            expected = "(1, 2.5)"
            compare = { mode = "exact" }
            [[case]]
            name = "spaces"
            expr = "spaced()"
            check = "output"
        """,
        "solution/submission.py": """
            def area(r): return 3.14159265 * r * r
            def greet(name): print(f"Hello, {name}!")
            def words(): return ['b', 'a', 'c']
            def lines(): print("one\\ntwo\\nthree")
            def pair(): return (1, 2.5)
            def spaced(): print("a b  c")
        """,
    })
    kit.add("sum", {
        "assignment.toml": 'title = "Sum"\nkind = "io"\nentry = "main.py"\nmax_points = 3\ntest_timeout_s = 1\n',
        "tests/cases.toml": """
            [[case]]
            stdin = "3 4\\n"
            visible = true
            [[case]]
            stdin = "10 -2\\n"
            [[case]]
            stdin = "1 1\\n"
            expected = "2"
        """,
        "solution/main.py": "a, b = map(int, input().split())\nprint(a + b)\n",
    })
    return kit


def test_correct_gets_full_marks(io_kit):
    report = io_kit.grade("primes", PRIMES_SOLUTION)
    assert report.outcome is Outcome.passed and report.correct and report.score == 11
    assert all(t.status is Status.passed for t in report.tests)


def test_partial_credit_and_visibility(io_kit):
    report = io_kit.grade("primes", "def is_prime(n):\n    return n % 2 == 1\n")
    assert report.outcome is Outcome.partial
    passed = sum(t.status is Status.passed for t in report.tests)
    assert report.score == pytest.approx(11 * passed / 11) and 0 < passed < 11
    shown = report.tests[0]  # is_prime(1): visible
    assert shown.visible and shown.input == "is_prime(1)" and shown.expected == "False" and shown.actual == "True"
    hidden = [t for t in report.tests if not t.visible]
    assert hidden and all(t.input is None and t.expected is None and t.actual is None for t in hidden)


def test_wrong_type_is_not_equal(io_kit):
    report = io_kit.grade("primes", f"{PRIMES_SOLUTION}\n_p = is_prime\ndef is_prime(n):\n    return int(_p(n))\n")
    assert report.score == 0 and report.outcome is Outcome.failed


def test_syntax_error_with_location(io_kit):
    report = io_kit.grade("primes", "def is_prime(n):\n    return (n\n\nx = [1, 2\n")
    assert report.outcome is Outcome.syntax_error and report.score == 0
    exp = report.explanations[0]
    assert exp.line is not None and exp.source_line and exp.title.startswith("Syntax error")


def test_missing_function(io_kit):
    report = io_kit.grade("primes", "def isprime(n):\n    return True\n")
    assert report.outcome is Outcome.missing_function
    assert "is_prime" in report.explanations[0].title


def test_wrong_signature_is_a_runtime_error(io_kit):
    report = io_kit.grade("primes", "def is_prime():\n    return True\n")
    assert report.outcome is Outcome.runtime_error
    assert report.tests[0].exception_type == "TypeError"
    assert "parameters do not match" in report.explanations[0].title


def test_exception_has_trimmed_traceback(io_kit):
    report = io_kit.grade("primes", "def helper(n):\n    raise ValueError('bad')\ndef is_prime(n):\n    return helper(n)\n")
    assert report.outcome is Outcome.runtime_error
    exp = next(e for e in report.explanations if "ValueError" in e.title)
    assert "submission.py" in exp.traceback and "line 2" in exp.traceback and "runner" not in exp.traceback


def test_import_time_exception(io_kit):
    report = io_kit.grade("primes", "raise RuntimeError('at import')\n")
    assert report.outcome is Outcome.runtime_error and report.score == 0
    assert "while loading" in report.explanations[0].title


def test_timeout_fails_that_case_and_the_rest_continue(io_kit):
    code = PRIMES_SOLUTION + "\n_p = is_prime\ndef is_prime(n):\n    while n == 97: pass\n    return _p(n)\n"
    report = io_kit.grade("primes", code)
    statuses = {t.name: t.status for t in report.tests}
    assert statuses["case 10"] is Status.timeout
    assert sum(s is Status.passed for s in statuses.values()) == 10
    assert report.outcome is Outcome.time_limit and report.score == 10


def test_memory_limit(io_kit):
    code = PRIMES_SOLUTION + "\n_p = is_prime\ndef is_prime(n):\n    if n == 9:\n        x = bytearray(400 * 2**20)\n    return _p(n)\n"
    report = io_kit.grade("primes", code)
    assert report.outcome is Outcome.memory_limit
    assert report.score == 10


def test_a_refused_allocation_is_the_memory_limit_not_a_runtime_error(io_kit):
    # MemoryError is how a per-process cap (rlimit mode) ends a bomb; here an
    # allocation no limit could grant raises it on the cgroup path as well.
    code = PRIMES_SOLUTION + "\n_p = is_prime\ndef is_prime(n):\n    if n == 9:\n        x = bytearray(2**48)\n    return _p(n)\n"
    report = io_kit.grade("primes", code)
    assert report.outcome is Outcome.memory_limit and report.score == 10
    assert any(e.title == "Memory limit exceeded" for e in report.explanations)
    report = io_kit.grade("primes", "x = bytearray(2**48)\n" + PRIMES_SOLUTION)   # at import
    assert report.outcome is Outcome.memory_limit and report.score == 0


def test_output_limit(io_kit):
    code = PRIMES_SOLUTION + "\n_p = is_prime\ndef is_prime(n):\n    if n == 25:\n        while True: print('x' * 1000)\n    return _p(n)\n"
    report = io_kit.grade("primes", code)
    assert report.outcome is Outcome.output_limit and report.score == 10


def test_comparison_modes_pass(io_kit):
    report = io_kit.grade("modes", """
        import math
        def area(r): return math.pi * r * r
        def greet(name): print("Hello,", name + "!")
        def words(): return ['b', 'a', 'z']
        def lines(): print("three\\none\\ntwo")
        def pair(): return (1, 2.5)
        def spaced(): print("  a   b c  ")
    """)
    assert report.outcome is Outcome.passed, [(t.name, t.status, t.actual, t.expected) for t in report.tests]


def test_comparison_modes_fail(io_kit):
    report = io_kit.grade("modes", """
        def area(r): return 3.2 * r * r
        def greet(name): print("Hi", name)
        def words(): return ['a', 'b']
        def lines(): print("one\\ntwo")
        def pair(): return [1, 2.5]
        def spaced(): print("abc")
    """)
    assert report.score == 0 and all(t.status is Status.failed for t in report.tests)
    greeting = next(t for t in report.tests if t.name == "greeting")
    assert greeting.expected.strip() == "Hello, Ada!" and greeting.actual.strip() == "Hi Ada"


def test_program_cases(io_kit):
    ok = io_kit.grade("sum", "", files={"main.py": b"print(sum(map(int, input().split())))\n"})
    assert ok.outcome is Outcome.passed and ok.score == 3
    wrong = io_kit.grade("sum", "", files={"main.py": b"a, b = map(int, input().split())\nprint(a * b)\n"})
    assert wrong.outcome is Outcome.failed and wrong.tests[0].actual.strip() == "12"
    assert wrong.tests[0].expected.strip() == "7" and wrong.tests[0].input == "3 4\n"
    syntax = io_kit.grade("sum", "", files={"main.py": b"print(1\n"})
    assert syntax.outcome is Outcome.syntax_error and syntax.explanations[0].line == 1
    crash = io_kit.grade("sum", "", files={"main.py": b"x = int(input().split()[0])\nprint(1 / (x - 3))\n"})
    assert crash.tests[0].status is Status.error and crash.tests[0].exception_type == "ZeroDivisionError"
    slow = io_kit.grade("sum", "", files={"main.py": b"while True: pass\n"})
    assert slow.outcome is Outcome.time_limit and all(t.status is Status.timeout for t in slow.tests)


def test_expected_values_computed_once(tmp_path, bwrap_backend):
    write_assignment(tmp_path / "h", "sq", {
        "assignment.toml": 'title = "sq"\nkind = "io"\n',
        "tests/cases.toml": '[[case]]\nexpr = "sq(3)"\n[[case]]\nexpr = "sq(4)"\n',
        "solution/submission.py": "def sq(x):\n    return x * x\n",
    })
    assignment = resolve(tmp_path / "h", "sq")
    calls = []
    kit = GradingKit(tmp_path / "h", bwrap_backend, tmp_path / "cache")
    from xgrader.handlers import io_kind
    ctx = kit.grader.context(assignment)

    def compute():
        calls.append(1)
        return io_kind.compute_reference(assignment, ctx)

    store = ExpectedStore(tmp_path / "cache")
    first = store.get(assignment, compute)
    assert store.get(assignment, compute) == first and len(calls) == 1       # memory
    assert ExpectedStore(tmp_path / "cache").get(assignment, compute) == first and len(calls) == 1  # disk
    assert first["cases"]["0"]["value"] == 9 and first["cases"]["1"]["value"] == 16
    assert oct((tmp_path / "cache").stat().st_mode & 0o777) == "0o700"
    # A changed solution is a new key.
    write_assignment(tmp_path / "h", "sq", {"solution/submission.py": "def sq(x):\n    return x ** 2 + 0\n"})
    store.get(resolve(tmp_path / "h", "sq"), compute)
    assert len(calls) == 2


def test_broken_reference_solution_is_an_assignment_error(make_kit):
    from xgrader.errors import AssignmentError
    kit = make_kit()
    kit.add("broken", {
        "assignment.toml": 'title = "b"\nkind = "io"\n',
        "tests/cases.toml": '[[case]]\nexpr = "f(1)"\n',
        "solution/submission.py": "def f(x):\n    return 1 / 0\n",
    })
    with pytest.raises(AssignmentError, match="reference solution failed"):
        kit.grade("broken", "def f(x): return 1\n")


def test_expected_key_is_cached_per_assignment_and_follows_the_runner(tmp_path):
    """The cache key (a hash of the assignment and the runner) is computed
    once per loaded assignment; a changed runner source changes it."""
    import shutil
    import time as _time

    from xgrader.config import DEFAULT_RUNNER_DIR
    from xgrader.handlers.expected import fingerprint

    write_assignment(tmp_path / "h", "sq", {
        "assignment.toml": 'title = "sq"\nkind = "io"\n',
        "tests/cases.toml": '[[case]]\nexpr = "sq(3)"\n',
        "solution/submission.py": "def sq(x):\n    return x * x\n",
    })
    runner = tmp_path / "runner"
    shutil.copytree(DEFAULT_RUNNER_DIR, runner, ignore=shutil.ignore_patterns("__pycache__", "image"))
    assignment = resolve(tmp_path / "h", "sq")
    store = ExpectedStore(tmp_path / "cache", runner_dir=runner)
    first = store.key(assignment)
    assert first == fingerprint(assignment, runner) == store.key(assignment)
    reloaded = resolve(tmp_path / "h", "sq")          # same content, another object: same key
    assert store.key(reloaded) == first
    _time.sleep(0.01)
    (runner / "runner_core.py").write_text((runner / "runner_core.py").read_text() + "\n# changed\n")
    assert store.key(assignment) == fingerprint(assignment, runner) != first


def test_sandbox_teardown_can_wait_until_the_reply_is_out(io_kit):
    """With `after_reply` (the daemon's child), grading returns once the
    student's sandbox is killed, and its teardown (exit, accounting, cgroup
    removal) is left to the list; without it, nothing is left at return."""
    import os

    from xgrader.daemon.child import tear_down
    from xgrader.grading import Grader
    from xgrader.job import GradeRequest

    cgroups = io_kit.backend.cgroups
    mine = lambda: [n for n in cgroups.owned_by(os.getpid()) if "-td-" in n]  # noqa: E731
    request = GradeRequest(grader="primes", student_response=PRIMES_SOLUTION, submission_id="t1", label="td")
    eager = Grader(io_kit.settings, io_kit.backend, store=io_kit.grader.store)
    assert eager.grade(request).score == 11 and mine() == []

    after_reply: list = []
    deferred = Grader(io_kit.settings, io_kit.backend, store=io_kit.grader.store, after_reply=after_reply)
    assert deferred.grade(request).score == 11
    assert len(after_reply) == 1 and len(mine()) == 1, mine()
    # Already killed: its processes go without anyone waiting for them.
    import time
    procs = [p / mine()[0] / "cgroup.procs" for p in cgroups.parents.values()]
    end = time.monotonic() + 2
    while any(f.read_text().split() for f in procs) and time.monotonic() < end:
        time.sleep(0.01)
    assert not any(f.read_text().split() for f in procs)
    tear_down(after_reply)
    assert after_reply == [] and mine() == []
