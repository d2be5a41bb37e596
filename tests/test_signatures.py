"""Declarative feedback signatures (assignment.toml [[feedback.signatures]]):
matching rules, that hidden values never take part, config errors, and the
instructor's message reaching a real graded submission on bwrap."""

from __future__ import annotations

import pytest

from tests.test_dispatch import IO_OK
from tests.support.grading import write_assignment
from xgrader import signatures
from xgrader.assignment import FeedbackSignature
from xgrader.dispatch import resolve
from xgrader.errors import AssignmentError
from xgrader.report import GradeReport, Outcome
from xgrader.report import TestReport as Result
from xgrader.report import TestStatus as Status

RETURNS_STR = FeedbackSignature(title="Returns text", message="Return an int.", actual="^'")
NEGATIVE = FeedbackSignature(title="Negative numbers", test="neg*", exception="ValueError")
PRINTS = FeedbackSignature(title="Prints", output="^True", actual="^None$")


def report(*tests: Result, score: float = 0) -> GradeReport:
    return GradeReport(assignment="a", outcome=Outcome.failed, score=score, max_score=3, tests=list(tests))


def test_visible_actual_and_output_match():
    r = report(Result(name="t", status=Status.failed, actual="'6'"),
               Result(name="u", status=Status.failed, actual="None", output="True\n"))
    out = signatures.apply([RETURNS_STR, NEGATIVE, PRINTS], r)
    assert [e.title for e in out.explanations] == ["Returns text", "Prints"]
    assert out.score == r.score and out.outcome is r.outcome


def test_every_condition_must_hold():
    wrong_exception = Result(name="negative", status=Status.error, exception_type="TypeError")
    wrong_name = Result(name="zero", status=Status.error, exception_type="ValueError")
    only_actual = Result(name="u", status=Status.failed, actual="None", output="")
    assert signatures.apply([NEGATIVE, PRINTS], report(wrong_exception, wrong_name, only_actual)).explanations == []
    hit = Result(name="negative", status=Status.error, exception_type="ValueError", visible=False)
    assert [e.title for e in signatures.apply([NEGATIVE], report(hit)).explanations] == ["Negative numbers"]


def test_hidden_values_never_take_part():
    # A hidden test's actual value must not be probed, even if a report carried one.
    hidden = Result(name="t", status=Status.failed, visible=False, actual="'6'")
    assert signatures.apply([RETURNS_STR], report(hidden)).explanations == []


def test_passed_and_never_run_tests_and_full_marks_do_not_fire():
    passed = Result(name="t", status=Status.passed, actual="'6'")
    missing = Result(name="negative", status=Status.missing, exception_type="ValueError")
    assert signatures.apply([RETURNS_STR, NEGATIVE], report(passed, missing)).explanations == []
    failing = Result(name="t", status=Status.failed, actual="'6'")
    assert signatures.apply([RETURNS_STR], report(failing, score=3)).explanations == []


@pytest.mark.parametrize("table, words", [
    ('[[feedback.signatures]]\ntitle = "x"\n', "at least one of"),
    ('[[feedback.signatures]]\ntitle = "x"\nactual = "("\n', "feedback.signatures.0.actual"),
    ('[[feedback.signatures]]\nmessage = "m"\ntest = "t"\n', "feedback.signatures.0.title"),
    ('[[feedback.signatures]]\ntitle = "x"\ntest = "t"\nvalue = 1\n', "value"),
])
def test_config_errors_name_the_field(tmp_path, table, words):
    toml = 'title = "x"\nkind = "io"\n' + table
    write_assignment(tmp_path, "bad", {**IO_OK, "assignment.toml": toml})
    with pytest.raises(AssignmentError, match=words) as info:
        resolve(tmp_path, "bad")
    assert "bad/assignment.toml" in str(info.value)


def test_instructor_message_reaches_a_graded_submission(kit):
    kit.add("digits", {
        "assignment.toml": """
            title = "Digits"
            kind = "io"
            max_points = 2
            [[feedback.signatures]]
            title = "Your function returns text, not a number"
            message = "Return total, not str(total)."
            actual = "^'"
            [[feedback.signatures]]
            title = "Never fires"
            exception = "ZeroDivisionError"
        """,
        "tests/cases.toml": """
            [[case]]
            expr = "sum_digits(123)"
            visible = true
            [[case]]
            expr = "sum_digits(45)"
        """,
        "solution/submission.py": "def sum_digits(n):\n    return sum(int(c) for c in str(n))\n",
    })
    wrong = kit.grade("digits", "def sum_digits(n):\n    return str(sum(int(c) for c in str(n)))\n")
    assert wrong.score == 0
    assert [e.title for e in wrong.explanations][:1] == ["Your function returns text, not a number"]
    assert all(e.title != "Never fires" for e in wrong.explanations)
    right = kit.grade("digits", "def sum_digits(n):\n    return sum(int(c) for c in str(n))\n")
    assert right.correct and right.explanations == []


# -- tests that did not run fire nothing; name forms as [[tests]] rules ----------

EVERYTHING = """
    [[feedback.signatures]]
    title = "Any failing test"
    test = "*"
    [[feedback.signatures]]
    title = "A NameError"
    exception = "NameError"
    [[feedback.signatures]]
    title = "An import problem"
    exception = "ModuleNotFoundError"
"""


def test_signatures_do_not_fire_when_the_tests_did_not_run(kit):
    kit.add("notrun", {
        "assignment.toml": 'title = "Not run"\nkind = "io"\nfunctions = ["f"]\n' + EVERYTHING,
        "tests/cases.toml": '[[case]]\nexpr = "f(2)"\n[[case]]\nexpr = "f(3)"\n',
        "solution/submission.py": "def f(n):\n    return n * 2\n",
    })
    for code in ("def f(n)\n    return n * 2\n",            # syntax error
                 "def g(n):\n    return n * 2\n",            # missing function
                 "import no_such_module\ndef f(n):\n    return n * 2\n",   # module fails to load
                 "raise RuntimeError('at import')\n"):        # crashes while loading
        report = kit.grade("notrun", code)
        fired = [e.title for e in report.explanations if e.title in ("Any failing test", "A NameError",
                                                                      "An import problem")]
        assert fired == [], (code, fired)
        assert all(t.status is Status.not_run for t in report.tests), code
    # A test that ran and failed still fires them.
    wrong = kit.grade("notrun", "def f(n):\n    return n * 3\n")
    assert [e.title for e in wrong.explanations][:1] == ["Any failing test"]


def test_signatures_do_not_fire_for_a_notebook_sent_to_the_wrong_assignment(kit):
    import nbformat
    kit.add("nbsig", {
        "assignment.toml": 'title = "NB"\nkind = "pytest"\nfunctions = ["c_to_f", "f_to_c"]\n' + EVERYTHING,
        "tests/test_t.py": "from submission import c_to_f, f_to_c\n\ndef test_a():\n    assert c_to_f(0) == 32\n\n"
                           "def test_b():\n    assert f_to_c(32) == 0\n",
        "solution/submission.py": "def c_to_f(c):\n    return c * 9 / 5 + 32\n\ndef f_to_c(f):\n    return (f - 32) * 5 / 9\n",
    })
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("def is_prime(n):\n    return n > 1")]
    report = kit.grade("nbsig", files={"primes.ipynb": nbformat.writes(nb).encode()})
    assert report.explanations[0].title.startswith("Missing functions: c_to_f, f_to_c")
    assert "right file" in report.explanations[0].detail
    assert not any(e.title in ("Any failing test", "A NameError") for e in report.explanations)
    assert all(t.status is Status.not_run for t in report.tests)


@pytest.mark.parametrize("pattern", ["test_p.py::test_small[7-True]", "test_small[7-True]", "test_small",
                                     "test_small[7-*]", "*::test_small*"])
def test_test_patterns_match_the_forms_tests_rules_match(kit, pattern):
    name = "forms_" + "".join(c for c in pattern if c.isalnum())
    kit.add(name, {
        "assignment.toml": f'title = "Forms"\nkind = "pytest"\n'
                           f'[[feedback.signatures]]\ntitle = "matched"\ntest = "{pattern}"\n',
        "tests/test_p.py": "import pytest\nfrom submission import f\n\n"
                           "@pytest.mark.parametrize('n, ok', [(7, True), (9, False)])\n"
                           "def test_small(n, ok):\n    assert f(n) is ok\n\n"
                           "def test_other():\n    assert f(2) is True\n",
        "solution/submission.py": "def f(n):\n    return n in (2, 3, 5, 7)\n",
    })
    # Wrong only for 7: test_small[7-True] fails (hidden), the rest pass.
    report = kit.grade(name, "def f(n):\n    return n in (2, 3, 5)\n")
    assert [e.title for e in report.explanations if e.title == "matched"] == ["matched"]
    # Wrong only for 2 (test_other): a pattern for test_small must not match it.
    other = kit.grade(name, "def f(n):\n    return n in (3, 5, 7)\n")
    assert not any(e.title == "matched" for e in other.explanations)
