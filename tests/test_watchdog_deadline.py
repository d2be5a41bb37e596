"""A submission that never finishes is stopped once it has run for its
assignment's wall_s + 0.5 s, whatever the kind does with it: expression
cases that each time out and restart the sandbox, program cases run one
after another (starting sandboxes is not charged: with the fork servers it
costs milliseconds). The reference solution is not on the student's clock."""

from __future__ import annotations

import time

import pytest

from xgrader.handlers.context import WATCHDOG_GRACE_S
from xgrader.report import TestStatus as Status

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
    assert all(t.status is Status.timeout for t in report.tests), [t.status for t in report.tests]
    assert elapsed <= WALL_S + WATCHDOG_GRACE_S + TEARDOWN_S, elapsed


def test_slow_but_finite_cases_still_pass_within_wall_s(looped):
    # 8 cases of 0.15 s each: 1.2 s of the 2 s wall, every one passes.
    report = looped.grade("loop_expr", "import time\ndef f(n):\n    time.sleep(0.15)\n    return n + 1\n")
    assert report.correct, [t.status for t in report.tests]


# -- the pytest kind: the test sandbox's calls are on the same clock ----------------

PYTEST_TESTS = "from submission import f\n" + "".join(
    f"\ndef test_{i}():\n    assert f({i}) == {i + 1}\n" for i in range(8))
# The test sandbox's own start and collection, on top of the student's time.
PYTEST_START_S = 1.5


def add_pytest_assignment(kit, name: str, rules: str = "") -> None:
    """8 tests of f, 1 s each at most, wall_s 2; its expected values computed."""
    kit.add(name, {
        "assignment.toml": f'title = "f"\nkind = "pytest"\nfunctions = ["f"]\ntest_timeout_s = 1.0\n'
                           f"[limits]\nwall_s = {WALL_S}\n{rules}",
        "solution/submission.py": "def f(n):\n    return n + 1\n",
        "tests/test_f.py": PYTEST_TESTS,
    })
    assert kit.grade(name, "def f(n):\n    return n + 1\n").correct


@pytest.fixture(scope="module", params=["bwrap", "docker"])
def pytest_looped(request, tmp_path_factory):
    from tests.support.grading import GradingKit
    from tests.support.sandbox import docker_settings
    from xgrader.backends import make_backend
    from xgrader.config import Settings

    if request.param == "docker":
        settings = docker_settings(request.getfixturevalue("podman_engine"))
    else:
        settings = Settings(sandbox="bwrap")
    backend = make_backend(settings)
    kit = GradingKit(tmp_path_factory.mktemp("handlers"), backend, tmp_path_factory.mktemp("expected"))
    add_pytest_assignment(kit, "loop_pytest")
    yield kit
    backend.close()


def test_pytest_kind_a_submission_that_never_ends_is_stopped_by_wall_s(pytest_looped):
    # 8 tests of 1 s each would run 8 s; the submission gets its 2 s.
    started = time.monotonic()
    report = pytest_looped.grade("loop_pytest", LOOP)
    elapsed = time.monotonic() - started
    assert report.score == 0
    assert all(t.status is Status.timeout for t in report.tests), [t.status for t in report.tests]
    assert elapsed <= WALL_S + WATCHDOG_GRACE_S + TEARDOWN_S + PYTEST_START_S, elapsed


def test_pytest_kind_slow_but_finite_tests_still_pass_within_wall_s(pytest_looped):
    report = pytest_looped.grade("loop_pytest", "import time\ndef f(n):\n    time.sleep(0.15)\n    return n + 1\n")
    assert report.correct, [(t.status, t.message) for t in report.tests]


def test_pytest_kind_tests_not_run_for_lack_of_time_say_so(pytest_looped):
    # Visible tests: the first ones time out, the rest say the running time was used up.
    kit = pytest_looped
    add_pytest_assignment(kit, "loop_pytest_visible", '[[tests]]\npattern = "*"\nvisible = true\n')
    report = kit.grade("loop_pytest_visible", LOOP)
    messages = [t.message or "" for t in report.tests]
    assert sum("Took longer than 1 s" in m for m in messages) in (2, 3), messages
    assert sum("used up its running time (2 s" in m for m in messages) >= 5, messages
