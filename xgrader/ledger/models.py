"""What the ledger stores and gives back (pydantic at its boundary)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from xgrader import __version__

if TYPE_CHECKING:
    from xgrader.job import GradedSubmission

Source = Literal["daemon", "push", "batch", "grade", "regrade"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TestOutcome(BaseModel):
    """One test of one attempt: its status and points, and whatever the
    grade report held about it (`detail`: input, expected, actual, message,
    output, exception type; hidden tests keep what the handler reported)."""

    model_config = ConfigDict(frozen=True)

    name: str
    status: str
    visible: bool
    weight: float
    points: float
    detail: dict[str, Any] = Field(default_factory=dict)


class AttemptRecord(BaseModel):
    """One graded submission, as recorded."""

    model_config = ConfigDict(frozen=True)

    source: Source
    graded_at: float                       # epoch seconds (UTC)
    student: str                           # anonymised id (xqueue student_info) or a batch file name
    queue: str = ""
    submission_id: str = ""
    assignment: str
    assignment_version: str = ""           # hash of the assignment's config, tests, solution, files
    payload: dict[str, Any] = Field(default_factory=dict)   # grader_payload options, hint_type
    student_response: str = ""
    files: dict[str, bytes] = Field(default_factory=dict)
    outcome: str
    score: float
    max_score: float
    correct: bool
    tests: list[TestOutcome] = Field(default_factory=list)
    signatures: list[str] = Field(default_factory=list)   # titles of the feedback signatures that fired
    feedback: str = ""                     # the reply's msg: what the student saw
    report: dict[str, Any] = Field(default_factory=dict)  # the whole GradeReport (explanations, hint...)
    timings: dict[str, float] = Field(default_factory=dict)
    xgrader_version: str = __version__
    regrade_of: int | None = None
    regrade_id: str | None = None

    @classmethod
    def from_graded(cls, graded: "GradedSubmission") -> "AttemptRecord":
        request, report, reply = graded.request, graded.report, graded.reply
        payload: dict[str, Any] = {"options": dict(request.options)}
        if request.hint_type:
            payload["hint_type"] = request.hint_type
        tests = []
        for t in report.tests:
            detail = t.model_dump(exclude={"name", "status", "visible", "weight", "points"}, exclude_none=True)
            tests.append(TestOutcome(name=t.name, status=t.status.value, visible=t.visible, weight=t.weight,
                                     points=t.points, detail=detail))
        return cls(
            source=graded.source, graded_at=graded.graded_at or time.time(),
            student=graded.student or request.student_id, queue=graded.queue,
            submission_id=request.submission_id, assignment=request.grader or report.assignment,
            assignment_version=getattr(report, "version", "") or "",
            payload=payload, student_response=request.student_response, files=dict(request.files),
            outcome=report.outcome.value, score=report.score, max_score=report.max_score,
            correct=bool(reply.correct), tests=tests, signatures=list(getattr(report, "signatures", []) or []),
            feedback=reply.msg, report=json.loads(report.model_dump_json()),
            timings={k: round(float(v), 6) for k, v in (graded.timings or {}).items()},
            regrade_of=graded.regrade_of, regrade_id=graded.regrade_id,
        )


class AttemptSummary(BaseModel):
    """A history row."""

    id: int
    graded_at: float
    source: str
    student: str
    queue: str
    submission_id: str
    assignment: str
    assignment_version: str
    outcome: str
    score: float
    max_score: float
    correct: bool
    signatures: list[str] = Field(default_factory=list)
    regrade_of: int | None = None
    regrade_id: str | None = None
    xgrader_version: str = ""


class Attempt(AttemptSummary):
    """One attempt in full: files, tests, feedback, report and timings."""

    payload: dict[str, Any] = Field(default_factory=dict)
    student_response: str = ""
    files: dict[str, bytes] = Field(default_factory=dict)
    missing_files: list[str] = Field(default_factory=list)   # stored by hash only (over the size limit)
    tests: list[TestOutcome] = Field(default_factory=list)
    feedback: str = ""
    report: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
