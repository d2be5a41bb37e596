"""The mutation kind on real bwrap sandboxes: scoring, the floor, the
reference runs, what every run's test sandbox gets (the same job), the
relay's policy, and mutants.toml errors."""

from __future__ import annotations

import pytest

from xgrader.errors import AssignmentError
from xgrader.handlers import mutation_kind
from xgrader.handlers.mutation_kind import refusal, scrub
from xgrader.report import Outcome

REFERENCE = """
    def clamp(x, lo, hi):
        if x < lo:
            return lo
        if x > hi:
            return hi
        return x
"""

ASSIGNMENT = {
    "assignment.toml": """
        title = "Clamp tests"
        kind = "mutation"
        entry = "test_clamp.py"
        module = "clamp"
        max_points = 4
        test_timeout_s = 1
        [limits]
        wall_s = 3
        [mutation]
        min_tests = 2
    """,
    "description.md": "Test clamp(x, lo, hi).",
    "solution/clamp.py": REFERENCE,
    "mutants/low.py": REFERENCE.replace("if x < lo:", "if x <= lo - 1:").replace("return lo", "return lo - 1"),
    "mutants/high.py": REFERENCE.replace("return hi", "return x"),
    "mutants/swap/clamp.py": REFERENCE.replace("        if x < lo:\n            return lo\n", ""),
    "mutants/mutants.toml": """
        [low]
        description = "returns one less than lo for values below lo"
        visible = true
        weight = 2
        [high]
        description = "does not cap values above hi"
        visible = true
        [swap]
        description = "does not raise values below lo"
    """,
}

FULL = """
    from clamp import clamp

    def test_low():
        assert clamp(-5, 0, 10) == 0

    def test_high():
        assert clamp(50, 0, 10) == 10

    def test_middle():
        assert clamp(5, 0, 10) == 5
"""


@pytest.fixture(scope="module")
def mutation(kit):
    kit.add("clamp", ASSIGNMENT)
    return kit


def test_score_is_the_weight_of_the_mutants_caught(mutation):
    assert mutation.grade("clamp", FULL).outcome is Outcome.passed
    only_high = FULL.replace("    def test_low():\n        assert clamp(-5, 0, 10) == 0\n", "")
    report = mutation.grade("clamp", only_high)
    assert report.outcome is Outcome.partial
    assert report.score == pytest.approx(4 * 1 / 4)   # high (weight 1) of 2 + 1 + 1
    assert report.explanations[0].title == "Your tests caught 1 of 3 bugs; 2 survived"
    low = next(t for t in report.tests if "one less than lo" in t.name)
    assert low.visible and low.status.value == "failed" and "No test of yours failed" in low.message
    hidden = [t for t in report.tests if not t.visible]
    assert [t.name for t in hidden] == ["hidden bug #1"]   # no description, no name, no code


def test_a_test_failing_on_the_reference_gives_zero_with_its_name_and_message(mutation):
    report = mutation.grade("clamp", FULL + "\n    def test_wrong():\n        assert clamp(3, 0, 10) == 4, 'three'\n")
    assert report.score == 0 and report.outcome is Outcome.failed
    assert report.explanations[0].title == "Your tests fail on a correct implementation"
    assert [t.name for t in report.tests] == ["test_clamp.py::test_wrong"]
    assert "three" in report.tests[0].message and report.tests[0].input == "clamp(3, 0, 10)"


def test_the_floor_and_an_empty_suite(mutation):
    one = mutation.grade("clamp", "from clamp import clamp\n\ndef test_low():\n    assert clamp(-5, 0, 10) == 0\n")
    assert one.score == 0 and one.explanations[0].title == "Not enough tests"
    empty = mutation.grade("clamp", "# no tests yet\n")
    assert empty.score == 0 and empty.explanations[0].title == "No tests found"


def test_a_hanging_suite_is_reported_and_bounded(mutation):
    import time
    started = time.monotonic()
    report = mutation.grade("clamp", FULL + "\n    def test_forever():\n        while True:\n            pass\n")
    assert report.score == 0 and report.outcome is Outcome.time_limit
    assert any(t.name.endswith("test_forever") and t.status.value == "timeout" for t in report.tests)
    assert time.monotonic() - started < 30   # 5 runs, each stopped ~2 s into the hanging test


def test_every_run_gets_the_same_test_sandbox_and_the_reference_runs_twice(mutation, monkeypatch):
    backend = mutation.backend
    jobs, implementations = [], []
    real = backend.start

    def spy(job):
        if "pytest_side/launch.py" in " ".join(job.argv):
            jobs.append(job)
        else:
            implementations.append(job.files.get("clamp.py"))
        return real(job)

    monkeypatch.setattr(backend, "start", spy)
    mutation.grade("clamp", FULL)
    assert len(jobs) == 3 + 2                                   # 3 mutants, the reference twice
    assert all(j == jobs[0] for j in jobs)                      # files, argv, env, limits: identical
    assert "clamp.py" not in jobs[0].files                      # the implementation never enters it
    assert implementations.count(REFERENCE.encode().replace(b"    ", b"", 0)) >= 0
    assert len({bytes(i) for i in implementations if i}) == 4   # reference + 3 mutants, same file name


def test_the_relay_refuses_introspection_and_scrubs_replies():
    names = {"clamp": "function", "os": "value", "LIMIT": "value", "Box": "class"}
    assert refusal({"op": "call", "target": "clamp"}, names) is None
    assert refusal({"op": "call", "target": "Box.make"}, names) is None
    assert refusal({"op": "getattr", "target": None, "name": "LIMIT"}, names) is None
    for bad in ({"op": "call", "target": "os.system"}, {"op": "call", "target": "clamp.__globals__"},
                {"op": "getattr", "target": {"$handle": 1}, "name": "gi_frame"},
                {"op": "getattr", "target": None, "name": "clamp"},
                {"op": "call", "target": {"$handle": 2}, "method": "__reduce__"},
                {"op": "call", "target": "eval"}, {"op": "special", "target": "clamp", "name": "dir"}):
        assert refusal(bad, names), bad
    reply = scrub({"ok": False, "error": {"type": "ValueError", "message": "bad <f at 0x7f00aa>",
                                          "traceback": 'File "clamp.py", line 3\n    if x < lo:'}})
    assert reply["error"] == {"type": "ValueError", "builtin": None, "message": "bad <f>", "traceback": ""}
    handle = scrub({"ok": True, "value": [{"$handle": 3, "type": "Box", "repr": "<Box object at 0xdead>"}]})
    assert handle["value"][0]["repr"] == "<Box object>"
    module = scrub({"ok": True, "value": {"$handle": 4, "type": "module", "repr": "<module 'os'>"}})
    assert module["ok"] is False and "module" in module["error"]["message"]


@pytest.mark.parametrize("files, error", [
    ({"mutants/mutants.toml": "[nope]\ndescription = 'x'\n"}, "no mutant of that name"),
    ({"mutants/odd/other.py": "x = 1\n"}, "is not a file of solution/"),
    ({"mutants/same.py": REFERENCE}, "identical to the reference"),
    ({"mutants/mutants.toml": "[low]\nweight = -1\n"}, "field weight"),
])
def test_mutant_configuration_errors_name_the_file(mutation, files, error):
    import textwrap
    name = f"bad{abs(hash(error)) % 10000}"
    folder = mutation.add(name, {**ASSIGNMENT, **files})
    if "same.py" in str(files):
        (folder / "mutants/same.py").write_text(textwrap.dedent(REFERENCE).lstrip("\n"))
    with pytest.raises(AssignmentError, match=error):
        mutation.grader.registry.get(name)


def test_a_mutation_assignment_needs_a_test_file_entry(mutation):
    mutation.add("noentry", {**ASSIGNMENT, "assignment.toml": ASSIGNMENT["assignment.toml"].replace(
        'entry = "test_clamp.py"', 'entry = "clamp_tests.py"')})
    with pytest.raises(AssignmentError, match="entry must name the student's test file"):
        mutation.grader.registry.get("noentry")


def test_module_file_submitted_by_the_student_is_ignored(mutation):
    # A student who ships their own clamp.py still tests the grader's implementations.
    report = mutation.grade("clamp", "", files={"test_clamp.py": FULL.replace("\n    ", "\n").encode(),
                                                 "clamp.py": b"def clamp(x, lo, hi):\n    return 0\n"})
    assert report.outcome is Outcome.passed, report
    assert mutation_kind.REFERENCE == ""
