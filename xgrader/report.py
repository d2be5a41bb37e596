"""What a handler concludes about one submission, before it is rendered.

Handlers produce a :class:`GradeReport`; the feedback renderer turns it into
the LMS `msg` (HTML) or text; hints read it for context; the pipeline turns it
into the wire reply. Student-controlled strings in here are raw (already
cleaned of control characters) and are escaped only by the renderer.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TestStatus(str, enum.Enum):
    passed = "passed"
    failed = "failed"        # ran, wrong answer / assertion failed
    error = "error"          # the student's code raised
    timeout = "timeout"      # per-test or whole-run time limit
    missing = "missing"      # never reported (early exit, crash, kill): a failure
    # Could not run: a syntax error, a module that failed to load, a missing
    # function or class the test needs. A failure, but says nothing about a
    # mistake in what the test checks (signatures do not fire on it).
    not_run = "not_run"


class Outcome(str, enum.Enum):
    """The headline of a graded submission (metrics label, feedback summary)."""

    passed = "passed"                # full marks
    partial = "partial"              # some points
    failed = "failed"                # no points, ran normally
    syntax_error = "syntax_error"
    missing_function = "missing_function"
    runtime_error = "runtime_error"
    time_limit = "time_limit"
    memory_limit = "memory_limit"
    output_limit = "output_limit"
    bad_submission = "bad_submission"  # unreadable upload, rejected zip, broken notebook
    error = "error"                    # assignment/payload problem: the student's fault is unknown


class Evidence(BaseModel):
    """What the grader saw while a test ran, for the built-in explanations
    (xgrader.explain) and the staff view (`xgrader grade --staff`, batch JSON).

    Holds hidden values (inputs, expected and actual results, messages): it is
    excluded from every serialisation of a TestReport and never rendered into
    the student's `msg`; explanations built from it pass the safety rules of
    xgrader.explain first."""

    model_config = ConfigDict(frozen=True)

    input: str | None = None          # the expression / last call / stdin
    expected: str | None = None       # repr or text
    actual: str | None = None         # repr or text
    expected_value: Any = None        # decoded, when the handler had the value
    actual_value: Any = None
    has_values: bool = False          # expected_value/actual_value are set
    check: str = "value"              # value | output (printed text) | program (stdout)
    function: str | None = None       # the student function whose return value is `actual`
    message: str | None = None        # the test's own failure message (pytest), e.g. "DID NOT RAISE ..."
    called: list[str] = Field(default_factory=list)   # every name the test called, in order
    output: str = ""                  # what the student's code printed
    error: dict[str, Any] | None = None   # runner error: type, message, traceback, frames, recursion
    sample: list[list[Any]] | None = None  # [[file, line], ...] where the code was when stopped
    timeout_s: float | None = None
    mutated: bool = False             # an argument was changed in place by the call
    secrets: list[str] = Field(default_factory=list)  # hidden literals of this test (numbers, words)


class TestReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    status: TestStatus
    weight: float = 1.0
    points: float = 0.0
    visible: bool = True
    # Shown only for visible tests; hidden tests show pass/fail only.
    input: str | None = None
    expected: str | None = None
    actual: str | None = None
    message: str | None = None   # assertion/explanation, student-facing
    output: str | None = None    # what the student's code printed during the test
    # Exception type name for hints (also kept for hidden tests, never values).
    exception_type: str | None = None
    # image kind: a `data:image/png;base64,` URI of a difference image the
    # grader drew (never bytes the student's code wrote); visible tests only.
    image: str | None = None
    # For the record (mastery): the skill ids the test practises (skills.toml).
    skills: list[str] = Field(default_factory=list)
    # Stable identity for rules and signatures (`file.py::test_x[7-True]`, an
    # io case's name). Staff-side: for a hidden test it may hold parameters
    # (hidden inputs), so it is left out of every serialisation of the report
    # (read it as an attribute) and the renderer and the hint prompt never show it.
    test_id: str | None = Field(None, exclude=True)
    evidence: Evidence | None = Field(None, exclude=True, repr=False)


class Explanation(BaseModel):
    """A plain-language note about the whole submission (syntax error, missing
    function, limit hit), with optional source location."""

    model_config = ConfigDict(frozen=True)

    title: str
    detail: str = ""
    line: int | None = None
    column: int | None = None
    source_line: str | None = None
    traceback: str | None = None  # trimmed to the student's own frames
    # Where, as the student numbers it: "line 7", or "cell 4, line 2" in a notebook.
    location: str | None = None
    # The signature that produced it: a built-in name (xgrader.explain, e.g.
    # "returns_none") or the instructor's; None for plain notes.
    signature: str | None = None
    # Names a line, a name, a type or a behaviour (the coverage checker counts these).
    specific: bool = False
    # test_ids it is about (criteria attach by these); staff-side like TestReport.test_id.
    tests: list[str] = Field(default_factory=list, exclude=True)
    marks: str | None = None      # what it did to the score, shown: "-2 points", "score capped at 5"


class CriterionReport(BaseModel):
    """One [[criteria]] entry of the rubric: its points and its feedback items."""

    model_config = ConfigDict(frozen=True)

    title: str
    points: float
    max_points: float
    passed: int = 0
    total: int = 0                 # tests in the criterion
    items: list[int] = Field(default_factory=list)   # indexes into GradeReport.explanations
    tests: list[str] = Field(default_factory=list, exclude=True)   # test_ids in the criterion (staff-side)


class StaffAnswer(BaseModel):
    """A course staff answer to the student's question about an AI hint."""

    model_config = ConfigDict(frozen=True)

    question: str = ""   # the student's note
    answer: str


class GradeReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    assignment: str
    title: str = ""
    outcome: Outcome
    score: float = Field(ge=0)
    max_score: float = Field(gt=0)
    tests: list[TestReport] = Field(default_factory=list)
    explanations: list[Explanation] = Field(default_factory=list)
    criteria: list[CriterionReport] = Field(default_factory=list)   # empty: no [[criteria]]
    # Appended by the hint stage; never changes score or outcome.
    hint: str | None = None
    hint_type: str | None = None
    hint_link: str | None = None     # the hint's student page (rate, ask the staff), signed by xgrader
    # Staff answers not yet shown to this student (an operator setting; docs/hints.md).
    staff_answers: list[StaffAnswer] = Field(default_factory=list)
    # For the record (the attempt ledger), never rendered: the graded
    # assignment's version hash and the names of the signatures (built-in or
    # the instructor's) that gave its feedback.
    version: str = ""
    signatures: list[str] = Field(default_factory=list)
    # [feedback] show_skills: the titles of the skills this attempt's tests practised.
    skills_practised: list[str] = Field(default_factory=list)

    @property
    def correct(self) -> bool:
        return self.score >= self.max_score

    @property
    def passed_count(self) -> int:
        return sum(t.status is TestStatus.passed for t in self.tests)


def bad_submission_report(assignment: str, reason: str, max_score: float = 1.0, title: str = "") -> GradeReport:
    """0 points and the reason, for an upload that cannot be used."""
    return GradeReport(
        assignment=assignment, title=title, outcome=Outcome.bad_submission, score=0, max_score=max_score,
        explanations=[Explanation(title="Your submission could not be read", detail=reason)],
    )
