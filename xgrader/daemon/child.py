"""The per-submission work, run in a forked child: full parse, fetch files,
grade, report the reply body to the parent, which posts it exactly once over
its kept-alive connection (a child that died before reporting is the
parent's retry path; a reported reply is never lost with the child).

Hooks called in here would be lost with the child's memory (metrics live in
the parent), so the child records phase timings into its report and the
parent replays them into its hooks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from xgrader.daemon.messages import ChildReport, Reporter
from xgrader.errors import AssignmentError, InfraError, SubmissionError
from xgrader.hooks import Hooks
from xgrader.logs import clip
from xgrader.job import GradedSubmission, GradeRequest
from xgrader.backends.base import SandboxError
from xgrader.wire import GraderReply, PayloadError, Submission, parse_submission

if TYPE_CHECKING:
    from xgrader.config import Settings

log = structlog.get_logger(__name__)


@dataclass
class JobContext:
    """Everything a child needs; built by the parent before the fork."""

    content: str                 # the raw get_submission content
    queue: str
    header_raw: str
    submission_id: str
    label: str                   # xg-<daemon pid>-<submission id>: names the job's sandboxes
    settings: Settings
    client: Any
    backend: Any
    hints: Any = None
    attempt: int = 1
    hooks: Any = None            # the parent's HookChain: buffers calls made here (see events)
    cache: Any = None            # pipeline.GradingCache the parent filled before forking


class PhaseRecorder(Hooks):
    """Collects on_phase timings in the child for the parent's hooks."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    def on_phase(self, queue: str, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds


@dataclass
class _Timer:
    phases: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, started: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - started


def fresh_connections(client: Any) -> None:
    """The parent's keep-alive sockets must not be shared with a child: drop
    them (the session cookie survives). The daemon calls this in every child
    before the job; a new connection opens only if the job uses the client."""
    after_fork = getattr(client, "after_fork", None)
    if callable(after_fork):
        after_fork()
        return
    for attr in ("session", "_session"):
        session = getattr(client, attr, None)
        if session is not None and hasattr(session, "close"):
            session.close()  # requests: closes pools; a later request opens new ones
            return


def child_events(ctx: JobContext) -> list[list]:
    """Hook calls buffered in this child (client errors, re-logins, hints,
    sandbox starts and failures), for the parent to replay."""
    take = getattr(ctx.hooks, "take_child_events", None)
    return take() if callable(take) else []


def instrumented(ctx: JobContext) -> Any:
    """The backend, reporting sandbox start latency and failures by kind."""
    if ctx.hooks is None:
        return ctx.backend
    from xgrader.metrics import InstrumentedBackend
    return InstrumentedBackend(ctx.backend, ctx.hooks, ctx.queue)


def grade_and_report(ctx: JobContext, reporter: Reporter) -> None:
    """The default child job: grade, then hand the reply body to the parent,
    which posts it over its kept-alive connection (one put_result per pull,
    from one process). The child never posts. Never raises for expected
    failures: it reports. Every log line in here carries queue,
    submission_id (and assignment once known) through structlog's context."""
    from xgrader.logs import bind_submission

    after_reply: list = []
    with bind_submission(ctx.queue, ctx.submission_id):
        try:
            graded = _grade(ctx, reporter, after_reply)
            if graded is None:
                return
            reply, timer, fields, attempt = graded
            log.info("graded", attempt=ctx.attempt, assignment=fields["assignment"],
                     outcome=fields["grade_outcome"], score=fields["score"], posted="by_parent")
            reporter.report(ChildReport(outcome="graded", reply=reply.to_body(), phases=timer.phases,
                                        events=child_events(ctx), **fields))
            record_attempt(ctx, reporter, attempt)
        finally:
            # The sandboxes were killed before the report; waiting for them to
            # be gone and removing their cgroups happens while the parent posts
            # and the next job starts (the parent frees the slot on the report).
            tear_down(after_reply)


def record_attempt(ctx: JobContext, reporter: Reporter, attempt: GradedSubmission | None) -> None:
    """After the report (the parent posts meanwhile): hooks that keep a
    record of the attempt (the ledger) run here, in the child; what they
    report (the ledger's outcome) follows the report for the parent to replay."""
    if attempt is None or ctx.hooks is None:
        return
    try:
        ctx.hooks.on_attempt(attempt)
        reporter.events(child_events(ctx))
    except Exception as exc:   # the reply is out; nothing here may change that
        log.warning("record_attempt_failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")


def tear_down(after_reply: list) -> None:
    for step in after_reply:
        try:
            step()
        except Exception as exc:  # the cgroup is an orphan for cleanup_stale; never fatal here
            log.warning("sandbox_teardown_failed", error=clip(f"{type(exc).__name__}: {exc}", 200))
    after_reply.clear()


def _grade(ctx: JobContext, reporter: Reporter, after_reply: list | None = None
           ) -> tuple[GraderReply, _Timer, dict[str, Any], GradedSubmission | None] | None:
    """Parse, fetch, grade. Returns (reply, timer, report fields, the graded
    submission for the record: None for a malformed pull), or None after
    reporting an infrastructure failure (the parent retries, bounded).
    Killed sandboxes' teardowns go to `after_reply` (None: done at once)."""
    from xgrader import pipeline  # imported by the parent before forking; cheap here

    bound = log.bind(attempt=ctx.attempt)
    recorder = PhaseRecorder()
    timer = _Timer(recorder.phases)
    backend = instrumented(ctx)
    assignment, grade_outcome, score, max_score = "", "", None, None
    attempt: GradedSubmission | None = None
    try:
        try:
            submission: Submission = parse_submission(ctx.content)
        except PayloadError as exc:
            bound.error("payload_error", layer=exc.layer, error=exc.detail)
            report = pipeline.payload_error_report(exc.layer, exc.detail)
            reply = pipeline.reply_for(report)
            grade_outcome, score, max_score = "payload_error", 0.0, report.max_score
        else:
            assignment = submission.payload.grader
            structlog.contextvars.bind_contextvars(assignment=assignment)
            started = time.perf_counter()
            files = ctx.client.fetch_files(submission.files) if submission.files else {}
            timer.add("fetch", started)
            request = GradeRequest(
                grader=submission.payload.grader,
                options=submission.payload.options,
                student_response=submission.body.student_response,
                files=files,
                student_id=submission.student.anonymous_student_id,
                submission_id=ctx.submission_id,
                hint_type=submission.payload.hint_type,
                **_label_field(ctx.label),
            )
            started = time.perf_counter()
            report, reply = pipeline.grade_request(request, ctx.settings, backend, recorder, ctx.hints,
                                                   cache=ctx.cache, after_reply=after_reply)
            timer.add("grade", started)
            grade_outcome, score, max_score = report.outcome.value, report.score, report.max_score
            attempt = GradedSubmission(source="daemon", request=request, report=report, reply=reply,
                                       queue=ctx.queue, graded_at=time.time(), timings=timer.phases)
    except (InfraError, SandboxError) as exc:
        kind = "sandbox_start" if isinstance(exc, SandboxError) else "infra"
        bound.error("infra_failure", kind=kind, error=clip(exc, 500))
        reporter.report(ChildReport(outcome="infra", infra_kind=kind, detail=clip(exc, 500),
                                    phases=timer.phases, assignment=assignment,
                                    events=child_events(ctx)))
        return None
    except (AssignmentError, SubmissionError) as exc:  # pipeline answers these; be safe
        bound.error("unexpected_grading_error", error=clip(exc, 500))
        report = pipeline.error_report(assignment or "(unknown)", clip(exc, 500))
        reply = pipeline.reply_for(report)
        grade_outcome, score, max_score = "error", 0.0, report.max_score
    except Exception as exc:  # a handler bug: retried by the parent, bounded
        bound.exception("handler_crash")
        reporter.report(ChildReport(outcome="infra", infra_kind="handler_crash",
                                    detail=clip(f"{type(exc).__name__}: {exc}", 400),
                                    phases=timer.phases, assignment=assignment,
                                    events=child_events(ctx)))
        return None
    return reply, timer, {"assignment": assignment, "grade_outcome": grade_outcome,
                          "score": score, "max_score": max_score}, attempt


def classify_put(result: Any) -> tuple[str, str]:
    if getattr(result, "accepted", False):
        return "posted", ""
    if getattr(result, "foreign_key", False):
        return "foreign_key", "Incorrect key for submission"
    return "rejected", clip(getattr(result, "message", "") or getattr(result, "rejected", ""), 300)


def _label_field(label: str) -> dict[str, str]:
    """GradeRequest.label is additive; older contracts lack it."""
    return {"label": label} if "label" in GradeRequest.model_fields else {}
