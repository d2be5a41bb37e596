"""Assessment criteria and marks: the score as a rubric (assignment.toml
`[[criteria]]`) and what fired signatures' marks (add, deduct, cap) do to it.

Without criteria the handler's score stands (tests' weights), and marks of
fired signatures apply to it. With criteria the score is the sum over them:
a criterion earns its points in proportion to the weight of its tests that
passed (all its points when it lists no tests and the submission ran), then
the marks of the signatures it lists apply within it, and the result is
kept between 0 and its points. Marks of signatures no criterion lists apply
to the total. Each mark shows in its explanation ("-2 points").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xgrader.report import CriterionReport, Explanation, GradeReport, Outcome, TestReport, TestStatus
from xgrader.signatures import ran

if TYPE_CHECKING:
    from xgrader.assignment import Assignment, Criterion, FeedbackSignature

_KEEP_OUTCOME = {Outcome.syntax_error, Outcome.bad_submission, Outcome.error}
_LIMITS = {Outcome.time_limit, Outcome.memory_limit, Outcome.output_limit}


def _fmt(x: float) -> str:
    return f"{round(x, 2):g}"


def _points(x: float) -> str:
    return f"{_fmt(x)} point{'' if abs(x) == 1 else 's'}"


def apply_marks(score: float, max_points: float, sigs: list["FeedbackSignature"]) -> tuple[float, dict[str, str]]:
    """(the score after the marks of `sigs`, kept in [0, max_points]; each signature's mark text)."""
    texts: dict[str, str] = {}
    for sig in sigs:
        delta = sig.add - sig.deduct
        if delta:
            score += delta
            texts[sig.key] = ("+" if delta > 0 else "-") + _points(abs(delta))
    score = min(max(score, 0.0), max_points)
    for sig in sigs:
        cap = sig.cap_points(max_points)
        if cap is not None:
            score = min(score, cap)
            note = f"at most {_points(cap)}" + (f", {sig.cap}" if isinstance(sig.cap, str) else "")
            texts[sig.key] = (texts[sig.key] + ", " if sig.key in texts else "") + note
    return round(score, 4), texts


def _outcome(report: GradeReport, score: float, max_points: float) -> Outcome:
    o = report.outcome
    if o in _KEEP_OUTCOME:
        return o
    if score >= max_points:
        return Outcome.passed
    if o in _LIMITS:
        return o
    if score > 0:
        return Outcome.partial
    return Outcome.failed if o in (Outcome.passed, Outcome.partial) else o


def _in(assignment: "Assignment", crit: "Criterion", test: TestReport) -> bool:
    return any(assignment.in_rule(test.test_id or test.name, p) for p in crit.tests)


def apply(assignment: "Assignment", report: GradeReport) -> GradeReport:
    cfg = assignment.config
    sigs = {s.key: s for s in cfg.feedback.signatures}
    fired = [sigs[e.signature] for e in report.explanations if e.signature in sigs]
    marked = [s for s in fired if s.add or s.deduct or s.cap is not None]
    if not cfg.criteria and not marked:
        return report
    if report.outcome in _KEEP_OUTCOME:
        marked = []
    max_points = assignment.max_points
    texts: dict[str, str] = {}
    update: dict = {}
    if not cfg.criteria:
        score, texts = apply_marks(report.score, max_points, marked)
    else:
        listed = {n for c in cfg.criteria for n in c.signatures}
        rubric: list[CriterionReport] = []
        points_of: dict[int, float] = {}
        score = 0.0
        did_run = ran(report)
        for crit in cfg.criteria:
            members = [i for i, t in enumerate(report.tests) if _in(assignment, crit, t)]
            total = sum(report.tests[i].weight for i in members)
            earned = sum(report.tests[i].weight for i in members if report.tests[i].status is TestStatus.passed)
            if crit.tests:
                base = crit.points * earned / total if total else 0.0
            else:
                base = crit.points if did_run else 0.0
            for i in members:
                if report.tests[i].status is TestStatus.passed and total:
                    points_of[i] = points_of.get(i, 0.0) + crit.points * report.tests[i].weight / total
            own = [s for s in marked if s.key in crit.signatures]
            got, own_texts = apply_marks(base, crit.points, own)
            texts.update({k: f"{v} on \u201c{crit.title}\u201d" for k, v in own_texts.items()})
            ids = {report.tests[i].test_id or report.tests[i].name for i in members}
            items = [k for k, e in enumerate(report.explanations)
                     if e.signature in crit.signatures or ids.intersection(e.tests)]
            rubric.append(CriterionReport(
                title=crit.title, points=round(got, 4), max_points=crit.points, items=items, total=len(members),
                tests=sorted(ids),
                passed=sum(report.tests[i].status is TestStatus.passed for i in members)))
            score += got
        score, global_texts = apply_marks(score, max_points, [s for s in marked if s.key not in listed])
        texts.update(global_texts)
        update["criteria"] = rubric
        update["tests"] = [t.model_copy(update={"points": round(points_of.get(i, 0.0), 4)})
                           for i, t in enumerate(report.tests)]
    explanations: list[Explanation] = [
        e.model_copy(update={"marks": texts[e.signature]}) if e.signature in texts else e
        for e in report.explanations]
    score = round(min(max(score, 0.0), max_points), 4)
    update.update(score=score, max_score=max_points, explanations=explanations,
                  outcome=_outcome(report, score, max_points))
    return report.model_copy(update=update)
