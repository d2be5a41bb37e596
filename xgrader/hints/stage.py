"""The hint stage: `apply(request, report) -> report` with a hint attached,
or unchanged. Never raises, never changes score or outcome (the pipeline
enforces that too). Every decision is audited in the store.

    switch -> breaker -> quota reservation -> cache (guarded again) -> concurrency slot
      -> context -> [repair in the sandbox] -> hint -> guard (one regeneration)
      -> deliver (commit quota, cache, audit, [student page + signed link]) | no hint (release quota, audit)

With `answers_in_feedback`, staff answers the student has not seen in
feedback yet are attached to any graded report (full marks too).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any, Callable

import structlog
from pydantic import SecretStr

from xgrader.assignment import Assignment
from xgrader.errors import AssignmentError, SubmissionError
from xgrader.hints import prompts
from xgrader.hints.guard import Guard, hidden_values, public_text
from xgrader.hints.links import HintLinks
from xgrader.hints.llm import Completion, LLMClient, LLMError, LLMTimeout
from xgrader.hints.models import (
    PROMPT_VERSION, Attempt, AuditRecord, CachedHint, HintOutcome, HintType,
)
from xgrader.hints.repair import best_fix, code_tokens, parse_fixes
from xgrader.hints.store import HintStore, open_store
from xgrader.hooks import Hooks, safe_call
from xgrader.job import GradeRequest
from xgrader.report import GradeReport, Outcome, StaffAnswer

if TYPE_CHECKING:
    from xgrader.config import Settings

log = structlog.get_logger(__name__)

SLOT_POLL_S = 0.05
# The repair step may use at most this share of the budget: the hint needs the rest.
REPAIR_SHARE = 0.5
# Outcomes where a hint cannot help (nothing to point at).
_NO_HINT = {Outcome.passed, Outcome.error, Outcome.bad_submission}


def secret_values(settings: Settings) -> list[str]:
    """Every SecretStr in the settings (queue password, basic auth, API key...)."""
    out: list[str] = []

    def walk(model: Any) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr) and value.get_secret_value():
                out.append(value.get_secret_value())
            elif hasattr(type(value), "model_fields"):
                walk(value)

    walk(settings)
    return out


class _Run:
    """One submission's decision, accumulated for the audit log."""

    def __init__(self, request: GradeRequest, assignment: str, model: str) -> None:
        self.started = time.monotonic()
        self.record = AuditRecord(submission_id=request.submission_id, student=request.student_id,
                                  assignment=assignment, model=model, outcome=HintOutcome.error)
        self.tokens = 0
        self.assignment: Assignment | None = None
        self.files: dict[str, bytes] = {}

    def attempt(self, step: str, messages: list[dict[str, str]], completion: Completion | None,
                verdict: str) -> None:
        if completion:
            self.tokens += completion.tokens
        self.record.attempts.append(Attempt(
            step=step, messages=messages, reply=completion.text if completion else None, verdict=verdict,
            tokens=completion.tokens if completion else 0, seconds=round(completion.seconds, 3) if completion else 0,
        ))


class HintStage:
    def __init__(self, settings: Settings, hooks: Hooks | None = None, *, store: HintStore | None = None,
                 llm: LLMClient | None = None, registry: Any = None,
                 grade_files: Callable[[Assignment, dict[str, bytes]], GradeReport] | None = None) -> None:
        self.settings = settings
        self.cfg = settings.hints
        self.hooks = hooks or Hooks()
        self._store = store   # opened on first use: a store briefly down at start costs hints, not the daemon
        key = self.cfg.api_key.get_secret_value() if self.cfg.api_key else None
        self.llm = llm or LLMClient(self.cfg.base_url, self.cfg.model, key,
                                    self.cfg.request_timeout_s, self.cfg.max_retries)
        if registry is None:
            from xgrader.dispatch import AssignmentRegistry
            registry = AssignmentRegistry(settings.handlers)
        self.registry = registry
        self._grade_files = grade_files
        self.secrets = secret_values(settings)
        self.links = (HintLinks(self.cfg.link_secret.get_secret_value(), self.cfg.page_url, self.cfg.link_ttl_s)
                      if self.cfg.page_url and self.cfg.link_secret else None)

    @property
    def store(self) -> HintStore:
        if self._store is None:
            self._store = open_store(self.cfg.store)
        return self._store

    # -- the HintStage protocol ----------------------------------------------
    def apply(self, request: GradeRequest, report: GradeReport) -> GradeReport:
        answers = self._answers(request, report)
        update: dict[str, Any] = {"staff_answers": answers} if answers else {}
        if report.correct or report.outcome in _NO_HINT:
            return report.model_copy(update=update) if update else report
        run = _Run(request, report.assignment, self.cfg.model)
        try:
            hint, hint_type = self._decide(request, report, run)
        except Exception as exc:  # a hint bug must never cost a grade
            log.exception("hint_failed", submission_id=request.submission_id)
            run.record.outcome, run.record.reason = HintOutcome.error, f"{type(exc).__name__}: {exc}"[:300]
            hint, hint_type = None, None
        audit_id = self._finish(run)
        if hint is not None and hint_type is not None:
            update.update(hint=hint, hint_type=hint_type.value,
                          hint_link=self._student_page(run, audit_id, report, hint, hint_type))
        return report.model_copy(update=update) if update else report

    def _answers(self, request: GradeRequest, report: GradeReport) -> list[StaffAnswer]:
        """Staff answers to this student's escalations about this assignment
        not yet shown in feedback (when the operator turned that on)."""
        if not self.cfg.answers_in_feedback or not request.student_id:
            return []
        try:
            taken = self.store.take_answers(request.student_id, report.assignment)
        except Exception:  # costs the answer in feedback, never the grade (it stays on the hint page)
            log.exception("hint_answers_failed", submission_id=request.submission_id)
            return []
        if taken:
            log.info("hint_answers_in_feedback", submission_id=request.submission_id,
                     escalations=[e.id for e in taken])
        return [StaffAnswer(question=e.note, answer=e.answer or "") for e in taken]

    def _student_page(self, run: _Run, audit_id: int, report: GradeReport, hint: str,
                      hint_type: HintType) -> str | None:
        """Record what the hint's student page and the staff need; the signed link, or None."""
        if self.links is None or not audit_id or run.assignment is None:
            return None
        from xgrader.hints.staff_view import delivery_for
        try:
            self.store.delivery_put(delivery_for(run.record.model_copy(update={"id": audit_id}), run.assignment,
                                                 report, run.files, hint_type, hint))
            return self.links.url(audit_id)
        except Exception:  # the hint is still delivered, without its page
            log.exception("hint_page_failed", submission_id=run.record.submission_id, audit_id=audit_id)
            return None

    # -- steps ---------------------------------------------------------------
    def _decide(self, request: GradeRequest, report: GradeReport, run: _Run) -> tuple[str | None, HintType | None]:
        rec = run.record
        deadline = run.started + self.cfg.budget_s
        try:
            assignment = self.registry.get(request.grader)
        except AssignmentError as exc:
            rec.outcome, rec.reason = HintOutcome.error, f"assignment: {exc}"[:300]
            return None, None
        rec.assignment = assignment.name
        if not assignment.config.hints.enabled or self.store.is_disabled(assignment.name):
            rec.outcome = HintOutcome.disabled
            rec.reason = "off in assignment.toml" if not assignment.config.hints.enabled else "switched off by staff"
            return None, None
        hint_type = self._hint_type(request, assignment)
        rec.hint_type = hint_type
        if self.store.breaker_open():
            rec.outcome, rec.reason = HintOutcome.error, "circuit breaker open"
            return None, None
        files = self._files(request, assignment)
        run.assignment, run.files = assignment, files
        code = files.get(assignment.config.entry, b"").decode("utf-8", "replace")
        rec.cache_key = self.cache_key(assignment, code, hint_type)

        token = self.store.reserve(request.student_id or "(anonymous)", assignment.name, hint_type.value,
                                   self.cfg.quota_per_assignment, self.cfg.quota_per_type,
                                   hold_s=self.cfg.budget_s + 60)
        if token is None:
            rec.outcome, rec.reason = HintOutcome.quota, "quota used up"
            return None, None
        hint: str | None = None
        try:
            cached = self.store.cache_get(rec.cache_key)
            if cached is not None:
                # The guard may have changed since (new rules, new hidden tests): check again.
                verdict = self._guard(assignment, code, hint_type).check_text(cached.hint)
                if verdict.ok:
                    rec.outcome, rec.source_audit_id, hint = HintOutcome.cached, cached.audit_id, verdict.hint
                else:
                    self.store.cache_delete(rec.cache_key)
                    rec.reason = (f"cached hint of decision {cached.audit_id} fails the current guard "
                                  f"({verdict.reason}): dropped from the cache")
                    cached = None
            if cached is None:
                hint = self._generate(assignment, report, files, code, hint_type, deadline, run)
            rec.delivered = hint is not None
            rec.hint = hint
        finally:
            (self.store.commit if hint is not None else self.store.release)(token)
        return hint, hint_type

    def _generate(self, assignment: Assignment, report: GradeReport, files: dict[str, bytes], code: str,
                  hint_type: HintType, deadline: float, run: _Run) -> str | None:
        rec = run.record
        slot = self._slot(deadline)
        if slot is None:
            rec.outcome, rec.reason = HintOutcome.timeout, "no free model slot within the budget"
            return None
        try:
            ctx = prompts.build_context(report, code, assignment.description, hint_type, self.secrets)
            guard = self._guard(assignment, code, hint_type)
            try:
                fix = self._repair(assignment, files, ctx, deadline, run) if self.cfg.repair else None
                rejected: str | None = None
                for step in ("hint", "regenerate"):
                    messages = prompts.hint_messages(ctx, fix, rejected)
                    completion = self.llm.chat(messages, deadline)
                    verdict = guard.check(completion.text, fix)
                    run.attempt(step, messages, completion, verdict.reason)
                    if verdict.ok:
                        self.store.breaker_record(True, self.cfg.breaker_failures, self.cfg.breaker_reset_s)
                        rec.outcome = HintOutcome.delivered
                        return verdict.hint
                    rejected = verdict.reason
                self.store.breaker_record(True, self.cfg.breaker_failures, self.cfg.breaker_reset_s)
                rec.outcome, rec.reason = HintOutcome.guard_rejected, rejected or ""
                return None
            except LLMTimeout as exc:
                rec.outcome, rec.reason = HintOutcome.timeout, str(exc)[:300]
            except LLMError as exc:
                self.store.breaker_record(False, self.cfg.breaker_failures, self.cfg.breaker_reset_s)
                rec.outcome, rec.reason = HintOutcome.error, str(exc)[:300]
            return None
        finally:
            self.store.release_slot(slot)

    def _repair(self, assignment: Assignment, files: dict[str, bytes], ctx: prompts.HintContext,
                deadline: float, run: _Run) -> str | None:
        repair_deadline = time.monotonic() + (deadline - time.monotonic()) * REPAIR_SHARE
        messages = prompts.repair_messages(ctx, assignment.config.entry)
        try:
            completion = self.llm.chat(messages, repair_deadline)
        except LLMTimeout:
            run.attempt("repair", messages, None, "error: no answer in the repair share of the budget")
            return None
        fixes = parse_fixes(completion.text)
        result = best_fix(assignment, files, fixes, self._grader(), repair_deadline)
        run.attempt("repair", messages, completion, result.summary)
        run.record.repair = result.summary
        return result.fix

    # -- helpers -------------------------------------------------------------
    def _guard(self, assignment: Assignment, code: str, hint_type: HintType) -> Guard:
        return Guard(hint_type, code, public_text(assignment), hidden_values(assignment),
                     "\n".join(d.decode("utf-8", "replace") for d in assignment.solution.values()),
                     self.secrets)

    def _hint_type(self, request: GradeRequest, assignment: Assignment) -> HintType:
        wanted = request.hint_type or request.options.get("hint")
        if wanted:
            try:
                return HintType(str(wanted).strip().lower().replace("optimization", "optimisation"))
            except ValueError:
                log.warning("hint_type_unknown", submission_id=request.submission_id, hint_type=str(wanted)[:40])
        return HintType(assignment.config.hints.hint_type)

    @staticmethod
    def _files(request: GradeRequest, assignment: Assignment) -> dict[str, bytes]:
        from xgrader.grading import materialize
        try:
            return materialize(request, assignment)
        except SubmissionError:
            return dict(request.files)

    def cache_key(self, assignment: Assignment, code: str, hint_type: HintType) -> str:
        tests = hashlib.sha256()
        for name, data in assignment.fingerprint_parts():
            tests.update(name.encode() + b"\0" + data + b"\0")
        normalised = " ".join(code_tokens(code))  # comments and layout do not matter
        raw = json.dumps([assignment.name, tests.hexdigest(), normalised, hint_type.value,
                          self.cfg.model, PROMPT_VERSION])
        return hashlib.sha256(raw.encode()).hexdigest()

    def _slot(self, deadline: float) -> str | None:
        while True:
            slot = self.store.acquire_slot(self.cfg.max_concurrency, hold_s=self.cfg.budget_s + 10)
            if slot is not None or time.monotonic() + SLOT_POLL_S >= deadline:
                return slot
            time.sleep(SLOT_POLL_S)

    def _grader(self) -> Callable[[Assignment, dict[str, bytes]], GradeReport]:
        if self._grade_files is None:
            from xgrader.grading import Grader
            from xgrader.backends import make_backend
            self._grade_files = Grader(self.settings, make_backend(self.settings)).grade_files
        return self._grade_files

    def _finish(self, run: _Run) -> int:
        """Audit the decision (its number, 0 if the store failed), cache a new hint, report it."""
        rec = run.record
        rec.tokens, rec.seconds = run.tokens, round(time.monotonic() - run.started, 3)
        try:
            audit_id = self.store.audit_add(rec)
            if rec.outcome is HintOutcome.delivered and rec.hint and rec.hint_type:
                self.store.cache_put(rec.cache_key, CachedHint(hint=rec.hint, hint_type=rec.hint_type,
                                                               audit_id=audit_id))
        except Exception:
            log.exception("hint_audit_failed", submission_id=rec.submission_id)
            audit_id = 0
        log.info("hint_decision", submission_id=rec.submission_id, assignment=rec.assignment,
                 outcome=rec.outcome.value, reason=rec.reason, audit_id=audit_id, tokens=rec.tokens,
                 seconds=rec.seconds)
        safe_call(self.hooks.on_hint, rec.outcome.value, rec.seconds, rec.tokens)
        safe_call(self.hooks.on_phase, "", "hint", rec.seconds)
        return audit_id
