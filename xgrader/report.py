"""What a handler concludes about one submission, before it is rendered.

Handlers produce a :class:`GradeReport`; the feedback renderer turns it into
the LMS `msg` (HTML) or text; hints read it for context; the pipeline turns it
into the wire reply. Student-controlled strings in here are raw (already
cleaned of control characters) and are escaped only by the renderer.
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field


class TestStatus(str, enum.Enum):
    passed = "passed"
    failed = "failed"        # ran, wrong answer / assertion failed
    error = "error"          # the student's code raised
    timeout = "timeout"      # per-test or whole-run time limit
    missing = "missing"      # never reported (early exit, crash, kill): a failure


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
    # Appended by the hint stage; never changes score or outcome.
    hint: str | None = None
    hint_type: str | None = None
    hint_link: str | None = None     # the hint's student page (rate, ask the staff), signed by xgrader
    # Staff answers not yet shown to this student (an operator setting; docs/hints.md).
    staff_answers: list[StaffAnswer] = Field(default_factory=list)
    # For the record (the attempt ledger), never rendered: the graded
    # assignment's version hash and the titles of the signatures that fired.
    version: str = ""
    signatures: list[str] = Field(default_factory=list)

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
