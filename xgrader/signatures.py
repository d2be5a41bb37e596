"""Declarative feedback signatures: instructor-written explanations for known
mistakes (assignment.toml `[[feedback.signatures]]`, the handlers root's
`signatures/` library; see docs/assignments.md).

Test conditions (`test`, `exception`, `actual`, `output`) hold when some test
that ran and failed meets all of them; a test that could not run (a syntax
error, a module that did not load, a missing function: status `not_run`)
or never reported (`missing`) takes no part. `test` matches the forms
`[[tests]]` rules match (`name`, `name[params]`, `file::name[params]`).
Hidden tests are matched only by name and exception type: their values never
take part, so a signature cannot reveal them.

Code conditions (`calls`, `uses`, `ast`) hold when the student's source
(parsed on the host with bounds, xgrader.source) matches. A signature fires
when every condition it has holds; one with code conditions only fires
whatever the score (that is how "uses sort although forbidden" caps a
submission that passes every test). No signature fires on a submission
that did not run at all (syntax error, unreadable upload, no test ran).

The marks a fired signature carries (add, deduct, cap) are applied by
xgrader.criteria, which also writes what they did into the explanation.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from xgrader.assignment import FeedbackSignature, compile_pattern, name_matches
from xgrader.report import Explanation, GradeReport, Outcome, TestReport, TestStatus
from xgrader.source import Source

if TYPE_CHECKING:
    from xgrader.assignment import Assignment

_RAN_AND_FAILED = {TestStatus.failed, TestStatus.error, TestStatus.timeout}
_DID_NOT_RUN = {Outcome.syntax_error, Outcome.bad_submission, Outcome.error}


def test_names(test: TestReport) -> tuple[str, ...]:
    """The names a `test` pattern is tried against, as for [[tests]] rules,
    plus the name the student sees."""
    ident = test.test_id or test.name
    qualified = ident.split("/")[-1]
    with_params = qualified.split("::")[-1]
    bare = with_params.split("[")[0]
    return (bare, with_params, qualified, ident, test.name)


def matches(sig: FeedbackSignature, test: TestReport) -> bool:
    """Does a test meet every test condition of `sig`?"""
    if test.status not in _RAN_AND_FAILED:
        return False
    if sig.test is not None and not any(name_matches(n, sig.test) for n in test_names(test)):
        return False
    if sig.exception is not None and test.exception_type != sig.exception:
        return False
    if sig.status is not None and test.status.value != sig.status:
        return False
    for pattern, value in ((sig.actual, test.actual), (sig.output, test.output)):
        if pattern is not None and not (test.visible and value is not None and re.search(pattern, value)):
            return False
    return True


def code_lines(sig: FeedbackSignature, source: Source) -> list[int] | None:
    """Lines where the code conditions hold (possibly none to point at), or
    None when they do not hold."""
    lines: list[int] = []
    if sig.calls:
        if not any(name in source.calls for name in sig.calls):
            return None
        lines += source.call_lines(sig.calls)
    if sig.uses and not any(use in source.uses for use in sig.uses):
        return None
    if sig.ast is not None:
        found = source.matches(compile_pattern(sig.ast))
        if not found:
            return None
        lines = found + lines
    return lines


def ran(report: GradeReport) -> bool:
    """Did the submission run at all (some test ran)?"""
    if report.outcome in _DID_NOT_RUN:
        return False
    return not report.tests or any(t.status is not TestStatus.not_run for t in report.tests)


def fire(sig: FeedbackSignature, report: GradeReport, source: Source | None) -> Explanation | None:
    tests: list[TestReport] = []
    if sig.on_tests:
        tests = [t for t in report.tests if matches(sig, t)]
        if sig.fallback:
            explained = {i for e in report.explanations if e.specific for i in e.tests}
            tests = [t for t in tests if (t.test_id or t.name) not in explained]
        if not tests:
            return None
    lines: list[int] = []
    if sig.on_code:
        found = code_lines(sig, source) if source is not None else None
        if found is None:
            return None
        lines = found
    expl = Explanation(title=sig.title, detail=sig.message, signature=sig.key, specific=True,
                       tests=[t.test_id or t.name for t in tests])
    if lines and source is not None:
        line = lines[0]
        expl = expl.model_copy(update={"line": line, "source_line": source.line(source.entry, line),
                                       "location": source.location(source.entry, line)})
    return expl


def apply(signatures: list[FeedbackSignature], report: GradeReport, source: Source | None = None) -> GradeReport:
    """The report with the explanation of every signature that fired (each
    once), first, before the automatic explanations."""
    if not signatures or not ran(report):
        return report
    fired = []
    for sig in signatures:
        if sig.on_tests and not sig.on_code and report.correct:
            continue
        expl = fire(sig, report, source)
        if expl is not None:
            fired.append(expl)
    if not fired:
        return report
    return report.model_copy(update={"explanations": [*fired, *report.explanations]})


def finish(assignment: "Assignment", report: GradeReport, source: Source | None) -> GradeReport:
    """Everything after a handler's report: the instructor's signatures, then
    marks and criteria (xgrader.criteria)."""
    from xgrader import criteria

    report = apply(assignment.config.feedback.signatures, report, source)
    report = criteria.apply(assignment, report)
    # For the record (the attempt ledger): which signatures, built-in or the
    # instructor's, gave this feedback.
    names = list(dict.fromkeys(e.signature for e in report.explanations if e.signature))
    return report.model_copy(update={"signatures": names}) if names else report
