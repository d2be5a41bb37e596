"""pytest kind: instructors assert on what the student's code printed, through
the `student_output` fixture and through capsys/capfd (the code runs in
another sandbox; its output comes back with each call's reply)."""

from __future__ import annotations

import pytest

from tests.support.grading import GradingKit
from xgrader.report import Outcome
from xgrader.report import TestStatus as Status

TESTS = '''
import pytest
from submission import greet, Counter, shout, LOUD

def test_last(student_output):
    assert greet("Ada") is None
    assert student_output.last.out == "Hello, Ada!\\n"
    assert student_output.last.err == "" and student_output.last == ("Hello, Ada!\\n", "")

def test_readouterr(student_output):
    assert student_output.readouterr() == ("", "")   # the import's output belongs to no test
    greet("A")
    greet("B")
    out, err = student_output.readouterr()
    assert out == "Hello, A!\\nHello, B!\\n" and err == ""
    assert student_output.readouterr().out == ""

def test_capsys(capsys):
    greet("C")
    print("from the test")
    assert capsys.readouterr().out == "Hello, C!\\nfrom the test\\n"

def test_capfd(capfd):
    greet("D")
    assert capfd.readouterr().out == "Hello, D!\\n"

def test_method_and_stderr(student_output):
    c = Counter()
    c.bump()
    assert student_output.last == ("1\\n", "bumped\\n")
    assert str(c) == "Counter(1)" and student_output.last.out == "str called\\n"

def test_output_of_a_call_that_raised(student_output):
    with pytest.raises(ValueError):
        shout("")
    assert student_output.last.out == "checking ''\\n"

def test_value_read(student_output):
    assert LOUD is True
'''

SOLUTION = '''
import sys
print("importing")
LOUD = True
def greet(name):
    print(f"Hello, {name}!")
class Counter:
    def __init__(self):
        self.n = 0
    def bump(self):
        self.n += 1
        print(self.n)
        print("bumped", file=sys.stderr)
    def __str__(self):
        print("str called")
        return f"Counter({self.n})"
def shout(text):
    print(f"checking {text!r}")
    if not text:
        raise ValueError("nothing to shout")
    return text.upper()
'''


@pytest.fixture(scope="module")
def out_kit(kit: GradingKit) -> GradingKit:
    kit.add("printing", {
        "assignment.toml": '''
            title = "Printing"
            kind = "pytest"
            max_points = 7
            [[tests]]
            pattern = "*"
            visible = true
        ''',
        "tests/test_printing.py": TESTS,
        "solution/submission.py": SOLUTION,
    })
    return kit


def test_student_output_and_capsys_see_what_the_code_printed(out_kit):
    report = out_kit.grade("printing", SOLUTION)
    assert report.outcome is Outcome.passed and report.score == 7, [
        (t.name, t.status, t.message) for t in report.tests]


def test_wrong_output_fails_exactly_the_tests_that_read_it(out_kit):
    wrong = SOLUTION.replace('print(f"Hello, {name}!")', 'print(f"Hello {name}")')
    report = out_kit.grade("printing", wrong)
    status = {t.name.split("::")[-1]: t.status for t in report.tests}
    assert status == {"test_last": Status.failed, "test_readouterr": Status.failed,
                      "test_capsys": Status.failed, "test_capfd": Status.failed,
                      "test_method_and_stderr": Status.passed,
                      "test_output_of_a_call_that_raised": Status.passed, "test_value_read": Status.passed}
    last = next(t for t in report.tests if t.name.endswith("test_last"))
    assert last.actual == "'Hello Ada\\n'" and last.expected == "'Hello, Ada!\\n'", last


# -- a collected session's jobs capture at sys level, switched on once ------------
# (no test file names descriptor-level output: sandbox/pytest_side/xgrader_template.py)

SYS_TESTS = '''
from submission import greet

def test_capsys_sees_code_and_test(capsys):
    print("before")
    greet("E")
    out, err = capsys.readouterr()
    assert out == "before\\nHello, E!\\n" and err == ""
    print("after")
    assert capsys.readouterr().out == "after\\n"

def test_prints_of_the_test_itself_go_nowhere_visible():
    for i in range(2000):
        print("noise", i)
    greet("F")

def test_student_output(student_output):
    greet("G")
    assert student_output.last.out == "Hello, G!\\n"
'''

CURRENT_TEST = '''
import os
from submission import greet

def test_knows_its_name():
    greet("H")
    assert os.environ["PYTEST_CURRENT_TEST"].endswith("test_knows_its_name (call)")
'''


@pytest.fixture(scope="module")
def sys_kit(kit: GradingKit) -> GradingKit:
    for name, tests, points in (("sysout", SYS_TESTS, 3), ("current", CURRENT_TEST, 1)):
        kit.add(name, {
            "assignment.toml": f'title = "{name}"\nkind = "pytest"\nmax_points = {points}\n'
                               '[[tests]]\npattern = "*"\nvisible = true\n',
            f"tests/test_{name}.py": tests,
            "solution/submission.py": SOLUTION,
        })
    return kit


@pytest.mark.parametrize("name,points", [("sysout", 3), ("current", 1)])
def test_collected_sessions_keep_capsys_and_the_current_test_name(sys_kit, name, points):
    for _ in range(3):  # the reference run (a plain job), then the collected session's jobs
        report = sys_kit.grade(name, SOLUTION)
        assert report.outcome is Outcome.passed and report.score == points, [
            (t.name, t.status, t.message) for t in report.tests]
    if name == "sysout":  # what the code printed still decides
        wrong = sys_kit.grade(name, SOLUTION.replace('print(f"Hello, {name}!")', 'print(f"Hi {name}")'))
        assert {t.name.split("::")[-1]: t.status for t in wrong.tests} == {
            "test_capsys_sees_code_and_test": Status.failed,
            "test_prints_of_the_test_itself_go_nowhere_visible": Status.passed,
            "test_student_output": Status.failed}
