"""A submission that never finishes is stopped once it has run for its
assignment's wall_s + 0.5 s, whatever the kind does with it: expression
cases that each time out and restart the sandbox, program cases run one
after another (starting sandboxes is not charged: with the fork servers it
costs milliseconds). The reference solution is not on the student's clock."""

from __future__ import annotations

import time

import pytest

from xgrader.handlers.context import WATCHDOG_GRACE_S
from xgrader.report import TestStatus

WALL_S = 2.0
# Teardown of the last sandbox after the kill (and a loaded machine): the
# code itself is stopped at the deadline.
TEARDOWN_S = 0.4

LOOP = "def f(n):\n    while True:\n        pass\n"


@pytest.fixture(scope="module")
def looped(kit):
    kit.add("loop_expr", {
        "assignment.toml": f"""
            title = "f"
            kind = "io"
            functions = ["f"]
            test_timeout_s = 1.0
            [limits]
            wall_s = {WALL_S}
        """,
        "solution/submission.py": "def f(n):\n    return n + 1\n",
        "tests/cases.toml": "".join(f'[[case]]\nexpr = "f({i})"\n' for i in range(8)),
    })
    kit.add("loop_prog", {
        "assignment.toml": f"""
            title = "echo"
            kind = "io"
            entry = "main.py"
            test_timeout_s = 1.0
            [limits]
            wall_s = {WALL_S}
        """,
        "solution/main.py": "print(input())\n",
        "tests/cases.toml": "".join(f'[[case]]\nstdin = "{i}\\n"\n' for i in range(6)),
    })
    # Expected values computed first (not on any submission's clock).
    assert kit.grade("loop_expr", "def f(n):\n    return n + 1\n").correct
    assert kit.grade("loop_prog", "print(input())\n").correct
    return kit


@pytest.mark.parametrize(("name", "code"), [("loop_expr", LOOP), ("loop_prog", "while True:\n    pass\n")])
def test_a_submission_that_never_ends_is_stopped_by_wall_s(looped, name, code):
    started = time.monotonic()
    report = looped.grade(name, code)
    elapsed = time.monotonic() - started
    assert report.score == 0
    assert all(t.status is TestStatus.timeout for t in report.tests), [t.status for t in report.tests]
    assert elapsed <= WALL_S + WATCHDOG_GRACE_S + TEARDOWN_S, elapsed


def test_slow_but_finite_cases_still_pass_within_wall_s(looped):
    # 8 cases of 0.15 s each: 1.2 s of the 2 s wall, every one passes.
    report = looped.grade("loop_expr", "import time\ndef f(n):\n    time.sleep(0.15)\n    return n + 1\n")
    assert report.correct, [t.status for t in report.tests]
