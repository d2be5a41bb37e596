"""Guard, prompt building and repair helpers on their own (no model, no sandbox)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xgrader.assignment import Assignment, AssignmentConfig, Case
from xgrader.hints import prompts
from xgrader.hints.guard import Guard, hidden_values, public_text
from xgrader.hints.models import HintType
from xgrader.hints.repair import best_fix, code_tokens, edit_distance, parse_fixes
from xgrader.report import Explanation, GradeReport, Outcome
from xgrader.report import TestReport as TR
from xgrader.report import TestStatus as Status

CODE = "def area(w, h):\n    return w + h\n"
REFERENCE = "def area(width, height):\n    result = width * height\n    return result\n"


def guard(kind=HintType.debugging, hidden=frozenset({"424242", "secret-word"})):
    return Guard(kind, CODE, "area(2, 3) should be 6", set(hidden), REFERENCE, ["sk-live-123"])


def verdict(text: str, fix: str | None = None, kind=HintType.debugging):
    return guard(kind).check(json.dumps({"hint": text}), fix)


@pytest.mark.parametrize("text", [
    "You add the two sides; an area multiplies them.",
    "Check which operator you use between w and h: the statement asks for the area.",
    "Think about what happens when `h` is 0.",
    "Return the product rather than the sum.",           # prose that starts like a keyword
])
def test_helpful_prose_passes(text):
    assert verdict(text).ok


@pytest.mark.parametrize("text,reason", [
    ("Write this:\n```\nreturn w * h\n```", "code block"),
    ("Change it to\nreturn w * h", "code-like line"),
    ("Use:\n    result = w * h", "code-like line"),
    ("def area(w, h): is fine but", "code-like line"),
    ("for side in sides:", "code-like line"),
    ("Use `result = width * height` instead.", "inline code"),
    ("The hidden test passes 424242.", "hidden test value"),
    ("It prints secret-word at the end.", "hidden test value"),
    ("Your key sk-live-123 is wrong", "secret"),
    ("word " * 100, "too long"),
    ("Compute result = width * height before returning.", "overlaps with the reference"),
])
def test_leaks_are_rejected(text, reason):
    v = verdict(text)
    assert not v.ok and reason in v.reason


def test_hidden_number_inside_a_longer_number_is_not_a_match():
    assert verdict("Try a case like 14242429 by hand.").ok


def test_planning_hints_may_be_longer():
    text = "First read both sides. " * 25
    assert not verdict(text).ok and verdict(text, kind=HintType.planning).ok


def test_fix_overlap_counts_only_tokens_the_student_has_not_written():
    fix = "def area(w, h):\n    product = w * h\n    return product\n"
    assert verdict("Store product = w * h then return product", fix).reason.startswith(("overlaps", "code"))
    # Repeating the student's own code is not a leak.
    assert verdict("Right now def area ( w , h ) returns w plus h.", fix).ok


@pytest.mark.parametrize("raw", ["", "null", "[]", '{"tip": "x"}', '{"hint": ""}', "{'hint': 'x'}"])
def test_malformed_replies(raw):
    assert guard().check(raw).reason.startswith("malformed")


def _assignment(tests=None, cases=None, public=None, description="") -> Assignment:
    kind = "io" if cases else "pytest"
    return Assignment(name="a", root=Path("/nonexistent"), config=AssignmentConfig(title="A", kind=kind),
                      tests=tests or {}, cases=cases or [], public_tests=public or {}, description=description)


def test_hidden_values_come_from_hidden_tests_only():
    a = _assignment(tests={"test_a.py": b'def test_x():\n    assert f("hello", 98765) == "olleh"\n',
                           "data.txt": b"not python"})
    assert {"hello", "98765", "olleh"} <= hidden_values(a)
    io = _assignment(cases=[Case(expr="f(111)", expected="'abc'", visible=True),
                            Case(expr="f(222333)", expected="'zzz'"), Case(stdin="quux\n", expected="ok!")])
    values = hidden_values(io)
    assert {"222333", "zzz", "quux"} <= values and "111" not in values
    assert "f(111)" in public_text(io)


def test_values_the_student_has_seen_are_not_policed():
    g = Guard(HintType.debugging, "print(98765)", "", {"98765", "77777"}, "", [])
    assert g.check(json.dumps({"hint": "Your code prints 98765."})).ok
    assert not g.check(json.dumps({"hint": "Try 77777."})).ok


def _report() -> GradeReport:
    return GradeReport(assignment="a", title="Area", outcome=Outcome.partial, score=1, max_score=3, tests=[
        TR(name="visible ok", status=Status.passed),
        TR(name="hidden-name-canary", status=Status.error, visible=False, input="f(31337)",
                   expected="ex-canary", actual="act-canary", message="msg-canary", exception_type="ZeroDivisionError"),
        TR(name="area(2, 3)", status=Status.failed, input="area(2, 3)", expected="6", actual="5",
                   message='File "/tmp/sandbox/work/submission.py", line 2'),
        TR(name="area(1, 1)", status=Status.failed, input="area(1, 1)", expected="1", actual="2"),
    ], explanations=[Explanation(title="Runtime error", detail="in /home/grader/x.py with key sk-live-123", line=2)])


def test_context_keeps_visible_failure_and_only_the_kind_of_hidden_ones():
    ctx = prompts.build_context(_report(), CODE + "# /etc/passwd\n", "Compute the area.", HintType.debugging,
                                ["sk-live-123"])
    text = "\n".join(m["content"] for m in prompts.hint_messages(ctx))
    assert "area(2, 3)" in text and "expected: 6" in text and "actual: 5" in text
    assert "area(1, 1)" not in text                        # only the first failing visible test
    assert "a hidden test error (ZeroDivisionError)" in text
    for leak in ("31337", "hidden-name-canary", "ex-canary", "act-canary", "msg-canary", "sk-live-123",
                 "/tmp/sandbox", "/home/grader", "/etc/passwd"):
        assert leak not in text
    assert "<path>" in text and "<redacted>" in text and "1 of 4 tests passed" in text


def test_delimiter_never_occurs_in_the_data():
    ctx = prompts.build_context(_report(), CODE, "", HintType.planning, [])
    tags = {prompts.hint_messages(ctx)[0]["content"].split("-BEGIN")[0].split()[-1] for _ in range(20)}
    assert len(tags) == 20
    assert prompts._delimiter("DATA-") .startswith("DATA-")


def test_token_edit_distance_ignores_layout_and_comments():
    a = code_tokens("def f(x):\n    return x+1\n")
    b = code_tokens("def f(x):   # doc\n\n    return x + 1\n")
    assert a == b and edit_distance(a, b) == 0
    assert edit_distance(a, code_tokens("def f(x):\n    return x+2\n")) == 1
    assert edit_distance(["a", "b", "c"], ["c"]) == 2
    assert code_tokens("def broken(:\n  '''") != []     # untokenizable code still compares


def test_parse_fixes_and_best_fix_picks_closest_passing():
    assert parse_fixes("nonsense") == [] and parse_fixes('{"fixes": "x"}') == []
    fixes = parse_fixes(json.dumps({"fixes": ["```python\ndef f(): return 1\n```", "def f(): return 2\n"]}))
    assert fixes == ["def f(): return 1\n", "def f(): return 2\n"]

    a = _assignment(tests={"test_x.py": b""})
    scores = {"far": 3, "near": 3, "wrong": 1}

    def grade(_assignment, files):
        return GradeReport(assignment="a", outcome=Outcome.partial, score=scores[files["submission.py"].decode().split()[0]],
                           max_score=3)

    student = {"submission.py": b"near a b c\n"}
    result = best_fix(a, student, ["wrong a b c\n", "far x y z w\n", "near a b d\n"], grade, deadline=1e18)
    assert result.fix == "near a b d\n" and "2 passed, kept distance 1" in result.summary
    assert best_fix(a, student, ["wrong\n"], grade, deadline=1e18).fix is None
    assert best_fix(a, student, ["near\n"], grade, deadline=0).summary.endswith("0 graded, none passed")


# -- hidden numbers are compared by value, not by text --------------------------

def _numbers_guard(seen: str = "") -> Guard:
    return Guard(HintType.debugging, CODE + seen, "area(2, 3) should be 6", {"33.83", "1000", "4096"},
                 REFERENCE, [])


@pytest.mark.parametrize("text", [
    "The total should come out as 33.830 here.",
    "Your loop should stop after 1e3 steps.",
    "Think about what happens with 1,000 items.",
    "Think about what happens with 1 000 items.",
    "Think about what happens with 1_000 items.",
    "Think about what happens with 1\u202f000 items.",
    "The result is 33,83 in some locales.",
    "Try it with one thousand items.",
    "Try it with a thousand items.",
    "Try it with four thousand and ninety-six items.",
    "It should be 4.096E3, not less.",
    "Check the case of -1000.",
])
def test_rewritten_hidden_numbers_are_rejected(text):
    v = _numbers_guard().check(json.dumps({"hint": text}))
    assert not v.ok and "hidden test value" in v.reason
    assert "33" not in v.reason and "1000" not in v.reason   # the reason goes back to the model


@pytest.mark.parametrize("text", [
    "Think about what happens with 100 items.",
    "Try a case like 14242429 by hand.",
    "Compare 33.8 with what you print.",
    "One thing at a time: first the loop, then the sum.",
])
def test_other_numbers_pass(text):
    assert _numbers_guard().check(json.dumps({"hint": text})).ok


def test_numbers_the_student_has_seen_pass_in_any_spelling():
    # The student's own code holds 1000: "one thousand" tells them nothing new.
    assert _numbers_guard("LIMIT = 1000\n").check(json.dumps({"hint": "Your limit of one thousand is fine."})).ok
    assert not _numbers_guard("LIMIT = 1000\n").check(json.dumps({"hint": "Expect 33.830 instead."})).ok


def test_hidden_numbers_of_an_assignment_are_policed_by_value():
    a = _assignment(tests={"test_a.py": b"import pytest\n\ndef test_x():\n"
                                        b"    assert total([1.5, 2]) == pytest.approx(33.83)\n"
                                        b"    assert count(1e3) == 'Total: 4,096'\n"})
    g = Guard(HintType.debugging, "def total(xs): return 0\n", "", hidden_values(a), "", [])
    for text in ("It should be 33.830.", "Use one thousand.", "Expect 4096 in total."):
        assert not g.check(json.dumps({"hint": text})).ok, text
