"""Declarative feedback signatures: instructor-written explanations for known
mistakes, matched against a handler's GradeReport (assignment.toml
`[[feedback.signatures]]`, see docs/assignments.md).

A signature fires when some test that ran and failed meets all of its
conditions. Hidden tests are matched only by name and exception type: their
values never take part, so a signature cannot reveal them. The message is the
instructor's text, shown before the automatic explanations.
"""

from __future__ import annotations

import fnmatch
import re

from xgrader.assignment import FeedbackSignature
from xgrader.report import Explanation, GradeReport, TestReport, TestStatus

# Tests that never ran (syntax error, early exit) say nothing about a mistake.
_RAN_AND_FAILED = {TestStatus.failed, TestStatus.error, TestStatus.timeout}


def matches(sig: FeedbackSignature, test: TestReport) -> bool:
    if test.status not in _RAN_AND_FAILED:
        return False
    if sig.test is not None and not fnmatch.fnmatchcase(test.name, sig.test):
        return False
    if sig.exception is not None and test.exception_type != sig.exception:
        return False
    for pattern, value in ((sig.actual, test.actual), (sig.output, test.output)):
        if pattern is not None and not (test.visible and value is not None and re.search(pattern, value)):
            return False
    return True


def fired(signatures: list[FeedbackSignature], report: GradeReport) -> list[FeedbackSignature]:
    """The signatures that fire on this report (none on full marks)."""
    if not signatures or report.correct:
        return []
    return [sig for sig in signatures if any(matches(sig, t) for t in report.tests)]


def apply(signatures: list[FeedbackSignature], report: GradeReport) -> GradeReport:
    """The report with the explanations of every signature that fired (each
    once); their titles are kept in `report.signatures` for the record."""
    hits = fired(signatures, report)
    if not hits:
        return report
    return report.model_copy(update={
        "explanations": [*(Explanation(title=sig.title, detail=sig.message) for sig in hits),
                         *report.explanations],
        "signatures": [sig.title for sig in hits]})
