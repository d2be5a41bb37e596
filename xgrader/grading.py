"""grade(request) -> GradeReport: dispatch -> assignment -> submission files
-> handler kind, all student code in sandboxes of the given backend.

A :class:`Grader` owns the per-process caches (loaded assignments, expected
values in memory); :func:`grade` without one uses a fresh Grader, whose
expected values still come from the on-disk cache after the first run.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import structlog

from xgrader import handlers, signatures
from xgrader.assignment import Assignment
from xgrader.config import Settings
from xgrader.dispatch import AssignmentRegistry
from xgrader.errors import AssignmentError, InfraError, SubmissionError
from xgrader.handlers.context import WATCHDOG_GRACE_S, GradeContext, StudentClock
from xgrader.handlers.expected import ExpectedStore
from xgrader.hooks import Hooks, safe_call
from xgrader.job import GradeRequest
from xgrader.mastery.catalog import SkillCatalog, load_catalog
from xgrader.report import GradeReport, bad_submission_report
from xgrader.source import Source
from xgrader.backends.base import Backend, SandboxError

log = structlog.get_logger(__name__)


def materialize(request: GradeRequest, assignment: Assignment) -> dict[str, bytes]:
    """The submission's files (xgrader.submissions handles uploads, zips, notebooks)."""
    try:
        from xgrader import submissions
    except ImportError:
        files = dict(request.files)
        if request.student_response or assignment.config.entry not in files:
            files[assignment.config.entry] = request.student_response.encode()
        return files
    return submissions.materialize(request, assignment)


class Grader:
    def __init__(self, settings: Settings, backend: Backend, hooks: Hooks | None = None,
                 registry: AssignmentRegistry | None = None, store: ExpectedStore | None = None,
                 after_reply: list | None = None) -> None:
        self.settings = settings
        self.after_reply = after_reply  # GradeContext.after_reply: None tears sandboxes down at once
        self.backend = backend
        self.hooks = hooks or Hooks()
        self.registry = registry or AssignmentRegistry(settings.handlers)
        self.store = store or ExpectedStore(runner_dir=settings.runner_dir)
        self._catalogs: dict[Path, SkillCatalog] = {}   # skills.toml per handlers root, read once

    def context(self, assignment: Assignment, request: GradeRequest | None = None) -> GradeContext:
        return GradeContext(
            settings=self.settings, backend=self.backend, hooks=self.hooks,
            limits=assignment.limits(self.settings), store=self.store,
            label=(request.label if request and request.label else "grade"),
            submission_id=request.submission_id if request else "",
            after_reply=self.after_reply,
        )

    def grade(self, request: GradeRequest, assignment: Assignment | None = None) -> GradeReport:
        """`assignment`: grade against this one instead of the payload's (a
        variant of it, as `xgrader coverage --all-hidden` uses)."""
        started = time.monotonic()
        assignment = assignment or self.registry.get(request.grader)
        try:
            files = materialize(request, assignment)
        except SubmissionError as exc:
            # The upload is unusable (bad zip, broken notebook): the student's to
            # fix, answered out of the assignment's own points.
            log.info("submission_rejected", submission_id=request.submission_id,
                     assignment=assignment.name, error=str(exc))
            return bad_submission_report(assignment.name, str(exc), assignment.max_points, assignment.title)
        report = self.grade_files(assignment, files, request)
        log.info("submission_graded", submission_id=request.submission_id, assignment=assignment.name,
                 outcome=report.outcome.value, score=report.score, max_score=report.max_score,
                 seconds=round(time.monotonic() - started, 3))
        return report

    def grade_files(self, assignment: Assignment, files: dict[str, bytes],
                    request: GradeRequest | None = None) -> GradeReport:
        # The student's own files, parsed once on this side with bounds, for
        # explanations and code signatures (xgrader.source).
        source = Source.of(files, assignment.config.entry)
        ctx = self.context(assignment, request)
        # The submission's code runs for wall_s in all, whatever the kind does
        # with it (cases, restarts, programs); then everything is stopped.
        ctx = dataclasses.replace(ctx, source=source, clock=StudentClock(ctx.limits.wall_s + WATCHDOG_GRACE_S))
        started = time.monotonic()
        try:
            report = handlers.run(assignment, files, ctx)
        except SandboxError as exc:
            safe_call(self.hooks.on_infra_failure, "", "sandbox_start")
            raise InfraError(f"sandbox failed: {exc}") from exc
        report = signatures.finish(assignment, report, source)
        if assignment.version and report.version != assignment.version:
            report = report.model_copy(update={"version": assignment.version})
        if assignment.declared_skills():
            report = self._with_skills(assignment, report)
        safe_call(self.hooks.on_phase, "", "run", time.monotonic() - started)
        return report


    def _with_skills(self, assignment: Assignment, report: GradeReport) -> GradeReport:
        """Each test's skills (for mastery), and the skills line when the assignment shows it."""
        tests = [t.model_copy(update={"skills": list(assignment.test_skills(t.test_id or t.name))})
                 for t in report.tests]
        update: dict = {"tests": tests}
        if assignment.config.feedback.show_skills:
            catalog = self._catalogs.get(assignment.handlers_root)
            if catalog is None:
                try:
                    catalog = load_catalog(assignment.handlers_root)
                except AssignmentError:
                    catalog = SkillCatalog()   # `xgrader check` names the problem; the ids still show
                self._catalogs[assignment.handlers_root] = catalog
            practised = dict.fromkeys(s for t in tests for s in t.skills)
            update["skills_practised"] = [catalog.title(s) for s in practised]
        return report.model_copy(update=update)


def grade(request: GradeRequest, settings: Settings, backend: Backend, hooks: Hooks | None = None,
          grader: Grader | None = None) -> GradeReport:
    return (grader or Grader(settings, backend, hooks)).grade(request)
