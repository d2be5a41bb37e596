"""Code signatures, marks, the shared signatures library and [[criteria]]:
configuration errors name the field; scores and the rubric come out of real
gradings on bwrap; assignments without criteria are scored as before."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from tests.support.grading import write_assignment
from xgrader import feedback
from xgrader.dispatch import AssignmentRegistry, resolve
from xgrader.errors import AssignmentError
from xgrader.report import Outcome

CASES = '[[case]]\nname = "a"\nexpr = "total([1, 2, 3])"\n[[case]]\nname = "b"\nexpr = "total([])"\n' \
        '[[case]]\nname = "c"\nexpr = "largest([4, 9, 2])"\n'
SOLUTION = "def total(xs):\n    s = 0\n    for x in xs:\n        s += x\n    return s\n\n" \
           "def largest(xs):\n    best = xs[0]\n    for x in xs:\n        if x > best:\n            best = x\n    return best\n"
USES_SUM = "def total(xs):\n    return sum(xs)\n\n" + SOLUTION.split("\n\n", 1)[1]


def _toml(extra: str) -> str:
    return 'title = "Lists"\nkind = "io"\nfunctions = ["total", "largest"]\n' + extra


@pytest.mark.parametrize("extra, words", [
    ('[[feedback.signatures]]\ntitle = "x"\nuses = ["goto"]\n', "feedback.signatures.0.uses"),
    ('[[feedback.signatures]]\ntitle = "x"\nast = "for x in"\n', "feedback.signatures.0.ast"),
    ('[[feedback.signatures]]\ntitle = "x"\ncalls = ["sum"]\ncap = "150%"\n', "feedback.signatures.0.cap"),
    ('[[feedback.signatures]]\ntitle = "x"\ncalls = ["sum"]\ndeduct = -1\n', "feedback.signatures.0.deduct"),
    ('[[feedback.signatures]]\nuse = "nope"\n', "no signature 'nope'"),
    ('[[criteria]]\ntitle = "A"\npoints = 2\nsignatures = ["nope"]\n', "criteria.0.signatures"),
    ('max_points = 5\n[[criteria]]\ntitle = "A"\npoints = 2\n', "differs from the criteria"),
    ('[[criteria]]\ntitle = "A"\npoints = 0\n', "criteria.0.points"),
    ('[feedback]\nexplain_skip = ["nope"]\n', "feedback.explain_skip"),
    ('[[feedback.signatures]]\nname = "n"\ntitle = "x"\ncalls = ["a"]\n'
     '[[feedback.signatures]]\nname = "n"\ntitle = "y"\ncalls = ["b"]\n', "names used twice"),
])
def test_config_errors_name_the_field(tmp_path, extra, words):
    write_assignment(tmp_path, "bad", {"assignment.toml": _toml(extra), "tests/cases.toml": CASES,
                                       "solution/submission.py": SOLUTION})
    with pytest.raises(AssignmentError, match=words) as info:
        resolve(tmp_path, "bad")
    assert "bad/assignment.toml" in str(info.value)


def test_library_errors_name_the_file(tmp_path):
    write_assignment(tmp_path, "ok", {"assignment.toml": _toml('[[feedback.signatures]]\nuse = "x"\n'),
                                      "tests/cases.toml": CASES, "solution/submission.py": SOLUTION})
    (tmp_path / "signatures").mkdir()
    (tmp_path / "signatures" / "lib.toml").write_text('[[signature]]\ntitle = "no name"\ncalls = ["a"]\n')
    with pytest.raises(AssignmentError, match=r"signatures/lib.toml: signature 1: field name"):
        resolve(tmp_path, "ok")
    (tmp_path / "signatures" / "lib.toml").write_text('[[signature]]\nname = "x"\ntitle = "t"\nuses = ["goto"]\n')
    with pytest.raises(AssignmentError, match=r"lib.toml: signature 'x': field uses"):
        resolve(tmp_path, "ok")


def test_code_signature_with_a_cap_fires_at_full_marks(kit):
    kit.add("capped", {
        "assignment.toml": _toml('max_points = 10\n[[feedback.signatures]]\nname = "no_sum"\n'
                                 'title = "sum() is not allowed here"\nmessage = "Add the numbers in a loop."\n'
                                 'calls = ["sum"]\ncap = "50%"\n'),
        "tests/cases.toml": CASES, "solution/submission.py": SOLUTION,
    })
    plain = kit.grade("capped", SOLUTION)
    assert plain.correct and plain.explanations == []
    r = kit.grade("capped", USES_SUM)
    assert all(t.status.value == "passed" for t in r.tests)
    assert r.score == 5 and r.outcome is Outcome.partial and not r.correct
    e = r.explanations[0]
    assert e.title == "sum() is not allowed here" and e.marks == "at most 5 points, 50%"
    assert e.line == 2 and e.source_line.strip() == "return sum(xs)" and e.signature == "no_sum"
    text = feedback.render_text(r)
    assert "sum() is not allowed here (at most 5 points, 50%)" in text and text.startswith("5/10 points")


def test_marks_add_and_deduct_and_stay_within_bounds(kit):
    kit.add("marks", {
        "assignment.toml": _toml('max_points = 3\n'
                                 '[[feedback.signatures]]\ntitle = "A while loop"\nuses = ["while"]\ndeduct = 1\n'
                                 '[[feedback.signatures]]\ntitle = "A for loop"\nast = "for _ in _: ..."\nadd = 0.5\n'),
        "tests/cases.toml": CASES, "solution/submission.py": SOLUTION,
    })
    # Correct, with both loops: 3 + 0.5 - 1 = 2.5.
    code = SOLUTION.replace("    for x in xs:\n        s += x\n", "    i = 0\n    while i < len(xs):\n"
                                                                   "        s += xs[i]\n        i += 1\n", 1)
    r = kit.grade("marks", code)
    assert r.score == 2.5
    assert {e.title: e.marks for e in r.explanations} == {"A while loop": "-1 point", "A for loop": "+0.5 points"}
    # Never above the maximum: a for loop only adds nothing past 3.
    assert kit.grade("marks", SOLUTION).score == 3


def test_library_signature_by_name_with_overrides(kit):
    (kit.root / "signatures").mkdir(exist_ok=True)
    (kit.root / "signatures" / "style.toml").write_text(
        '[[signature]]\nname = "no_sum"\ntitle = "sum() is not allowed"\nmessage = "Use a loop."\n'
        'calls = ["sum"]\ndeduct = 1\n')
    kit.add("lib", {
        "assignment.toml": _toml('max_points = 3\n[[feedback.signatures]]\nuse = "no_sum"\ndeduct = 2\n'),
        "tests/cases.toml": CASES, "solution/submission.py": SOLUTION,
    })
    r = kit.grade("lib", USES_SUM)
    assert r.score == 1 and r.explanations[0].title == "sum() is not allowed" and r.explanations[0].marks == "-2 points"


def test_library_edits_reload_the_assignment(tmp_path):
    write_assignment(tmp_path, "a", {"assignment.toml": _toml('[[feedback.signatures]]\nuse = "s"\n'),
                                     "tests/cases.toml": CASES, "solution/submission.py": SOLUTION})
    lib = tmp_path / "signatures" / "lib.toml"
    lib.parent.mkdir()
    lib.write_text('[[signature]]\nname = "s"\ntitle = "first"\ncalls = ["sum"]\n')
    registry = AssignmentRegistry(tmp_path)
    assert registry.get("a").config.feedback.signatures[0].title == "first"
    import os
    import time
    lib.write_text('[[signature]]\nname = "s"\ntitle = "second"\ncalls = ["sum"]\n')
    later = time.time() + 5
    os.utime(lib, (later, later))
    assert registry.get("a").config.feedback.signatures[0].title == "second"


RUBRIC = _toml('''
[[criteria]]
title = "Totals"
points = 4
tests = ["a", "b"]

[[criteria]]
title = "Largest"
points = 2
tests = ["c"]
signatures = ["returns_none"]

[[criteria]]
title = "Style"
points = 1
signatures = ["no_sum"]

[[feedback.signatures]]
name = "no_sum"
title = "sum() is not allowed"
calls = ["sum"]
deduct = 1
''')


def test_criteria_score_and_the_rubric(kit):
    kit.add("rubric", {"assignment.toml": RUBRIC, "tests/cases.toml": CASES, "solution/submission.py": SOLUTION})
    assert kit.grade("rubric", SOLUTION).score == 7
    code = USES_SUM.replace("    return best\n", "")            # largest() returns None, total() uses sum
    r = kit.grade("rubric", code)
    by_title = {c.title: c for c in r.criteria}
    assert (by_title["Totals"].points, by_title["Largest"].points, by_title["Style"].points) == (4, 0, 0)
    assert r.score == 4 and r.max_score == 7 and r.outcome is Outcome.partial
    largest = [r.explanations[i] for i in by_title["Largest"].items]
    assert [e.signature for e in largest] == ["returns_none"]
    style = [r.explanations[i] for i in by_title["Style"].items]
    assert style[0].marks == "-1 point on \u201cStyle\u201d"
    msg = feedback.render_html(r)
    root = ET.fromstring(msg)
    rubric = [el for el in root.iter("div") if el.get("class") == "xgrader-criterion"]
    texts = ["".join(el.itertext()) for el in rubric]
    assert texts[0].startswith("Totals: 4/4 points, 2 of 2 tests passed")
    assert texts[1].startswith("Largest: 0/2 points, 0 of 1 test passed") and "returned None" in texts[1]
    assert texts[2].startswith("Style: 0/1 points") and "sum() is not allowed" in texts[2]
    # Test points follow the criteria: a and b share Totals' 4 points.
    assert {t.name: t.points for t in r.tests} == {"a": 2, "b": 2, "c": 0}


def test_a_syntax_error_earns_nothing_from_criteria_without_tests(kit):
    kit.add("rubric2", {"assignment.toml": RUBRIC, "tests/cases.toml": CASES, "solution/submission.py": SOLUTION})
    r = kit.grade("rubric2", "def total(xs)\n    return 0\n")
    assert r.score == 0 and r.outcome is Outcome.syntax_error
    assert all(c.points == 0 for c in r.criteria)


def test_assignments_without_criteria_are_scored_by_weights(kit):
    kit.add("weights", {"assignment.toml": _toml("max_points = 4\n"),
                        "tests/cases.toml": CASES.replace('name = "c"', 'name = "c"\nweight = 2'),
                        "solution/submission.py": SOLUTION})
    r = kit.grade("weights", SOLUTION.replace("            best = x\n", "            pass\n"))
    assert r.score == 2 and r.criteria == []


def test_check_warns_about_tests_in_no_criterion(tmp_path):
    from xgrader import authoring
    write_assignment(tmp_path, "loose", {"assignment.toml": _toml('[[criteria]]\ntitle = "T"\npoints = 1\n'
                                                                  'tests = ["a", "b"]\n'),
                                         "tests/cases.toml": CASES, "solution/submission.py": SOLUTION})
    _errors, warnings = authoring.lint(resolve(tmp_path, "loose"))
    assert any("count for nothing: c" in w for w in warnings)
