"""Submission in, verdict out: the one grading path every entry point shares
(the daemon's per-job child, push mode, `xgrader grade`, `xgrader batch`).

    GradeRequest -> grading.grade -> [hints] -> feedback.render_html -> GraderReply

AssignmentError and SubmissionError become clear graded answers here;
InfraError propagates so the caller can retry it a bounded number of times.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import structlog

from xgrader import feedback, grading
from xgrader.errors import AssignmentError, SubmissionError
from xgrader.hooks import Hooks
from xgrader.job import GradeRequest
from xgrader.report import Explanation, GradeReport, Outcome, bad_submission_report
from xgrader.wire import GraderReply

if TYPE_CHECKING:
    from xgrader.config import Settings
    from xgrader.sandbox.base import Backend

log = structlog.get_logger(__name__)


class HintStage(Protocol):
    def apply(self, request: GradeRequest, report: GradeReport) -> GradeReport:
        """Return the report with a hint attached (or unchanged). Never raises,
        never changes score or outcome."""


def grade_request(
    request: GradeRequest,
    settings: "Settings",
    backend: "Backend",
    hooks: Hooks | None = None,
    hints: HintStage | None = None,
) -> tuple[GradeReport, GraderReply]:
    hooks = hooks or Hooks()
    try:
        report = grading.grade(request, settings, backend, hooks)
    except AssignmentError as exc:
        log.error("assignment_error", grader=request.grader, submission_id=request.submission_id, error=str(exc))
        report = error_report(request.grader, str(exc))
    except SubmissionError as exc:
        # Raised past the Grader (which answers it out of the assignment's
        # points) only by a handler that finds the files unusable.
        log.info("submission_error", grader=request.grader, submission_id=request.submission_id, error=str(exc))
        report = bad_submission_report(request.grader, str(exc))
    if hints is not None and not report.correct and report.outcome is not Outcome.error:
        report = _keep_grade(report, hints.apply(request, report))
    return report, reply_for(report)


def reply_for(report: GradeReport) -> GraderReply:
    correct = report.correct and report.outcome is not Outcome.error
    return GraderReply(correct=correct, score=report.score, msg=feedback.render_html(report))


def error_report(grader: str, reason: str) -> GradeReport:
    """A clear answer for a payload that names no usable assignment."""
    return GradeReport(
        assignment=grader, outcome=Outcome.error, score=0, max_score=1,
        explanations=[Explanation(
            title="This problem is not set up correctly",
            detail=f"The grader could not use this problem's configuration ({reason}). "
            "Your submission was not graded; please tell the course staff.",
        )],
    )


def payload_error_report(layer: str, detail: str) -> GradeReport:
    """A clear answer for a pulled submission whose `layer` is malformed (the
    LMS or queue sent something broken: not the student's fault)."""
    return GradeReport(
        assignment="(unknown)", outcome=Outcome.error, score=0, max_score=1,
        explanations=[Explanation(
            title="This submission arrived malformed",
            detail=f"The grader received a malformed {layer} ({detail}). "
            "Your submission was not graded; please try again or tell the course staff.",
        )],
    )


def _keep_grade(before: GradeReport, after: GradeReport) -> GradeReport:
    """The hint stage may only add the hint: score and verdict are the grader's."""
    return before.model_copy(update={"hint": after.hint, "hint_type": after.hint_type})
