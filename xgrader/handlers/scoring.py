"""Per-test results -> GradeReport: points, headline Outcome, explanations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from xgrader import explain
from xgrader.assignment import Assignment
from xgrader.source import Source
from xgrader.report import Explanation, GradeReport, Outcome, TestReport, TestStatus
from xgrader.backends.base import Verdict

LIMIT_OUTCOME = {
    Verdict.wall_time: Outcome.time_limit,
    Verdict.cpu_time: Outcome.time_limit,
    Verdict.memory: Outcome.memory_limit,
    Verdict.output: Outcome.output_limit,
}
LIMIT_TEXT = {
    Outcome.time_limit: ("Time limit exceeded",
                         "Your code ran longer than allowed. Look for an infinite loop or a slow algorithm."),
    Outcome.memory_limit: ("Memory limit exceeded",
                           "Your code used more memory than allowed. Look for data that grows without bound."),
    Outcome.output_limit: ("Output limit exceeded",
                           "Your code printed more than allowed. Look for a print inside a loop that never ends."),
}


LIMIT_SIGNATURE = {Outcome.time_limit: "time_limit", Outcome.memory_limit: "memory_limit",
                   Outcome.output_limit: "output_limit"}
SYNTAX_TYPES = ("SyntaxError", "IndentationError", "TabError")
# An allocation refused: the memory limit where it is a per-process cap
# (rlimit mode: a non-root author, a rootless engine without cgroup limits),
# or a request no limit could grant. The same verdict as the cgroup's OOM kill.
MEMORY_ERROR = "MemoryError"

STOPPED = Explanation(
    title="Your program stopped before answering",
    detail="Your code ended the program (exit(), os._exit() or a crash) while it was being tested.",
    signature="stopped",
)


@dataclass
class Findings:
    """What a handler noticed beyond per-test results."""

    limits: set[Outcome] = field(default_factory=set)
    missing: list[str] = field(default_factory=list)     # required names not defined
    runtime_error: bool = False
    explanations: list[Explanation] = field(default_factory=list)

    def note_limit(self, verdict: Verdict | None) -> Outcome | None:
        outcome = LIMIT_OUTCOME.get(verdict) if verdict is not None else None
        if outcome is not None:
            self.limits.add(outcome)
        return outcome


def syntax_explanation(error: dict[str, Any], source: Source | None = None) -> Explanation:
    return explain.syntax_explanation(error, source)


def exception_explanation(error: dict[str, Any], when: str, show_traceback: bool = True) -> Explanation:
    """A plain 'Your code raised X <when>' note (the image kind's)."""
    etype = str(error.get("type") or "Exception")
    return Explanation(
        title=f"Your code raised {etype} {when}",
        detail=f"{etype}: {error.get('message') or ''}".strip(),
        traceback=(error.get("traceback") or None) if show_traceback else None,
    )


def missing_explanation(names: list[str], source: Source | None = None,
                        required: list[str] | None = None) -> Explanation:
    return explain.missing_explanation(names, source, required or [])


def load_failure(assignment: Assignment, load: dict[str, Any], findings: Findings, source: Source | None,
                 syntax: Callable[[dict[str, Any]], GradeReport]) -> GradeReport | None:
    """The module did not load: a syntax error ends grading (`syntax` builds
    that report); a crash, timeout or limit at import is noted in `findings`
    (the tests did not run)."""
    err = load.get("error") or {}
    if err.get("type") in SYNTAX_TYPES or (
            err.get("type") == "ValueError" and "null bytes" in str(err.get("message"))):
        return syntax(err)
    if load.get("timeout"):
        findings.limits.add(Outcome.time_limit)
        where = explain.timeout_while_loading(load.get("sample"), assignment.config.test_timeout_s, source) \
            if assignment.explains("time_limit") else None
        if where is not None:
            findings.explanations.append(where)
    elif load.get("died"):
        if findings.note_limit(load.get("verdict")) is None:
            findings.runtime_error = True
            findings.explanations.append(STOPPED)
    elif err.get("type") == MEMORY_ERROR:
        findings.limits.add(Outcome.memory_limit)
    elif err:
        findings.runtime_error = True
        findings.explanations.append(explain.load_explanation(
            err, assignment.config.feedback.show_traceback, source if assignment.explains("load_error") else None))
    return None


def missing_required(assignment: Assignment, names: dict[str, Any] | None) -> list[str]:
    have = names or {}
    return [n for n in assignment.config.functions if n not in have]


def build(assignment: Assignment, tests: list[TestReport], findings: Findings,
          source: Source | None = None) -> GradeReport:
    max_points = assignment.max_points
    total = sum(t.weight for t in tests)
    earned = sum(t.weight for t in tests if t.status is TestStatus.passed)
    if total > 0 and earned >= total:
        score = max_points
    elif total > 0:
        score = round(max_points * earned / total, 4)
    else:
        score = 0.0
    tests = [t.model_copy(update={"points": round(max_points * t.weight / total, 4)
                                  if total and t.status is TestStatus.passed else 0.0}) for t in tests]
    if any(t.exception_type == MEMORY_ERROR and t.status is TestStatus.error for t in tests):
        findings.limits.add(Outcome.memory_limit)
    explanations = list(findings.explanations)
    explanations += explain.builtin_explanations(assignment, tests, source)
    for outcome in sorted(findings.limits, key=lambda o: o.value):
        title, detail = LIMIT_TEXT[outcome]
        name = LIMIT_SIGNATURE[outcome]
        if outcome is Outcome.time_limit and any(e.signature == name and e.specific for e in explanations):
            continue   # a specific "still running at line 7" says it better
        explanations.append(Explanation(title=title, detail=detail, signature=name))
    if findings.missing:
        explanations.insert(0, missing_explanation(
            findings.missing, source if assignment.explains("missing_function") else None,
            assignment.config.functions))

    if score >= max_points:
        outcome = Outcome.passed
    elif findings.limits:
        # A limit outranks partial credit: the student must learn why tests failed.
        outcome = next(o for o in (Outcome.time_limit, Outcome.memory_limit, Outcome.output_limit)
                       if o in findings.limits)
    elif score > 0:
        outcome = Outcome.partial
    elif findings.missing:
        outcome = Outcome.missing_function
    elif findings.runtime_error or any(t.status is TestStatus.error for t in tests):
        outcome = Outcome.runtime_error
    else:
        outcome = Outcome.failed
    return GradeReport(assignment=assignment.name, title=assignment.title, outcome=outcome,
                       score=score, max_score=max_points, tests=tests, explanations=explanations)


def syntax_report(assignment: Assignment, error: dict[str, Any], tests: list[TestReport],
                  source: Source | None = None) -> GradeReport:
    """No test ran: every one is `not_run` (signatures do not fire on them)."""
    not_run = [t.model_copy(update={"status": TestStatus.not_run, "points": 0.0}) for t in tests]
    return GradeReport(assignment=assignment.name, title=assignment.title, outcome=Outcome.syntax_error,
                       score=0, max_score=assignment.max_points, tests=not_run,
                       explanations=[syntax_explanation(error, source)])


def cap(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[:limit] + "\n[...]"
