"""Submission in, verdict out: the grading path of the daemon's per-job
child, push mode and `xgrader grade` (`batch` and `check` call the Grader
this wraps, without hints or the reply).

    GradeRequest -> grading.grade -> [hints] -> feedback.render_html -> GraderReply

AssignmentError and SubmissionError become clear graded answers here;
InfraError propagates so the caller can retry it a bounded number of times.

A :class:`GradingCache` (loaded assignments, expected values) can be built
once and passed to every call: the daemon fills one before it forks, so each
per-job child inherits the parsed assignments instead of re-reading and
re-validating the assignment folder for every submission.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import structlog

from xgrader import feedback, grading
from xgrader.dispatch import AssignmentRegistry
from xgrader.errors import AssignmentError, SubmissionError
from xgrader.handlers.expected import ExpectedStore
from xgrader.hooks import Hooks
from xgrader.job import GradeRequest
from xgrader.report import Explanation, GradeReport, Outcome, bad_submission_report
from xgrader.wire import GraderReply

if TYPE_CHECKING:
    from xgrader.config import Settings
    from xgrader.backends.base import Backend

log = structlog.get_logger(__name__)


class HintStage(Protocol):
    def apply(self, request: GradeRequest, report: GradeReport) -> GradeReport:
        """Return the report with a hint attached (or unchanged). Never raises,
        never changes score or outcome."""


class _NotCached(Exception):
    pass


def _not_cached() -> dict:
    raise _NotCached


class GradingCache:
    """What stays valid from one submission to the next: the assignment
    registry (keyed by folder and newest mtime, so an edited assignment is
    re-read) and the expected values (keyed by a hash of the assignment and
    the runner). Share one across grade_request calls; a forked child
    inherits a filled one."""

    def __init__(self, settings: "Settings") -> None:
        self.registry = AssignmentRegistry(settings.handlers)
        self.store = ExpectedStore(runner_dir=settings.runner_dir)

    def preload(self) -> list[str]:
        """Load and validate every assignment (configuration errors show in
        the log at start-up, and the rest still load) and read the expected values already on disk
        into memory; nothing is computed here (that runs the solution in a
        sandbox: left to the first grading). Returns the names that loaded."""
        ok = []
        for name in self.registry.names():
            try:
                assignment = self.registry.get(name)
            except AssignmentError as exc:
                log.error("assignment_invalid", assignment=name, error=str(exc))
                continue
            ok.append(name)
            try:
                self.store.get(assignment, _not_cached)
            except _NotCached:
                pass
            except Exception as exc:  # an unreadable cache costs speed only
                log.warning("expected_preload_failed", assignment=name, error=f"{type(exc).__name__}: {exc}"[:200])
        return ok

    def grader(self, settings: "Settings", backend: "Backend", hooks: Hooks,
               after_reply: list | None = None) -> grading.Grader:
        return grading.Grader(settings, backend, hooks, registry=self.registry, store=self.store,
                              after_reply=after_reply)


def grade_request(
    request: GradeRequest,
    settings: "Settings",
    backend: "Backend",
    hooks: Hooks | None = None,
    hints: HintStage | None = None,
    cache: GradingCache | None = None,
    after_reply: list | None = None,
) -> tuple[GradeReport, GraderReply]:
    """`after_reply`: a list the killed sandboxes' teardowns go to, for the
    caller to run once its reply is out (GradeContext.after_reply); None
    tears them down before returning."""
    hooks = hooks or Hooks()
    grader = (cache.grader(settings, backend, hooks, after_reply) if cache is not None
              else grading.Grader(settings, backend, hooks, after_reply=after_reply))
    try:
        report = grading.grade(request, settings, backend, hooks, grader)
    except AssignmentError as exc:
        log.error("assignment_error", grader=request.grader, submission_id=request.submission_id, error=str(exc))
        report = error_report(request.grader, str(exc))
    except SubmissionError as exc:
        # Raised past the Grader (which answers it out of the assignment's
        # points) only by a handler that finds the files unusable.
        log.info("submission_error", grader=request.grader, submission_id=request.submission_id, error=str(exc))
        report = bad_submission_report(request.grader, str(exc))
    if hints is not None and report.outcome is not Outcome.error:
        # Full marks get no hint, but may carry a staff answer (docs/hints.md).
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
    """The hint stage may only add the hint (and staff answers): score and verdict are the grader's."""
    return before.model_copy(update={"hint": after.hint, "hint_type": after.hint_type, "hint_link": after.hint_link,
                                     "staff_answers": after.staff_answers})
