"""Grading mutants against an assignment's tests, in the sandbox, in parallel.

    report = run_mutants(grader, assignment, mutants, jobs=2)
    report.score, report.survived, report.results[i].status

Each mutant is graded exactly like a submission (the same Grader, backend,
sandbox, fork servers; `jobs` at once). A mutant is:
  killed      a test failed on it (it scored less than full marks),
  timeout     it ran out of time (a test's time limit, or the whole run's),
  load_error  it did not load (syntax error, a required function missing),
  survived    full marks: no test tells it from the reference solution.
Timeouts and load errors count as killed in the score, reported apart.

Mutants run with a per-test time limit derived from the reference
solution's run (MUTANT_TIMEOUT_FACTOR x its time per test, at least
MIN_TEST_TIMEOUT_S, at most the assignment's own): an infinite loop costs
a fraction of a second, not the assignment's full limit per test. The
expected values and test list are the reference's (ExpectedStore.share).
"""

from __future__ import annotations

import enum
import time
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

from xgrader.assignment import Assignment
from xgrader.authoring import in_parallel
from xgrader.errors import AssignmentError, InfraError
from xgrader.grading import Grader
from xgrader.job import GradeRequest
from xgrader.mutation.generate import Mutant
from xgrader.report import GradeReport, Outcome, TestStatus

MUTANT_TIMEOUT_FACTOR = 5.0
MIN_TEST_TIMEOUT_S = 0.5
MUTABLE_KINDS = ("pytest", "io")   # kinds whose submissions are the solution's code, graded by tests
LOAD_OUTCOMES = {Outcome.syntax_error, Outcome.missing_function, Outcome.bad_submission}


class MutantStatus(str, enum.Enum):
    killed = "killed"
    timeout = "timeout"
    load_error = "load_error"
    survived = "survived"
    not_graded = "not_graded"   # infrastructure failure: neither killed nor survived


class MutantResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    file: str
    operator: str
    line: int
    description: str
    status: MutantStatus
    score: float | None = None
    max_score: float
    failing: list[str] = Field(default_factory=list)   # tests that told it apart
    seconds: float = 0.0
    diff: str = ""
    error: str = ""


class MutationReport(BaseModel):
    assignment: str
    version: str
    test_timeout_s: float
    seconds: float
    results: list[MutantResult]

    def count(self, status: MutantStatus) -> int:
        return sum(r.status is status for r in self.results)

    @property
    def graded(self) -> int:
        return sum(r.status is not MutantStatus.not_graded for r in self.results)

    @property
    def score(self) -> float:
        """Killed (timeouts and load errors included) over graded mutants; 1.0 with none."""
        graded = self.graded
        return 1.0 if not graded else (graded - self.count(MutantStatus.survived)) / graded

    @property
    def survived(self) -> list[MutantResult]:
        return [r for r in self.results if r.status is MutantStatus.survived]


def classify(report: GradeReport) -> tuple[MutantStatus, list[str]]:
    failing = [t.name for t in report.tests if t.status is not TestStatus.passed]
    if report.correct and report.outcome is not Outcome.error:
        return MutantStatus.survived, []
    if report.outcome in LOAD_OUTCOMES:
        return MutantStatus.load_error, failing
    ran = [t for t in report.tests if t.status is not TestStatus.missing]
    if report.outcome is Outcome.time_limit or any(t.status is TestStatus.timeout for t in report.tests):
        if not any(t.status in (TestStatus.failed, TestStatus.error) for t in ran):
            return MutantStatus.timeout, failing
    if report.tests and not ran:
        return MutantStatus.load_error, failing
    return MutantStatus.killed, failing


def mutant_assignment(assignment: Assignment, reference_seconds: float, n_tests: int) -> Assignment:
    """The assignment with the mutants' per-test time limit."""
    per_test = reference_seconds / max(1, n_tests)
    limit = min(assignment.config.test_timeout_s,
                max(MIN_TEST_TIMEOUT_S, MUTANT_TIMEOUT_FACTOR * per_test))
    config = assignment.config.model_copy(update={"test_timeout_s": round(limit, 3)})
    return assignment.model_copy(update={"config": config})


def run_mutants(grader: Grader, assignment: Assignment, mutants: list[Mutant], jobs: int = 2,
                progress: Callable[[int, int], None] | None = None) -> MutationReport:
    """Grade the reference solution (it must get full marks, or the score
    means nothing: AssignmentError), then every mutant, `jobs` at once."""
    if assignment.config.kind not in MUTABLE_KINDS:
        raise AssignmentError(f"{assignment.name} is a {assignment.config.kind!r} assignment: mutation testing "
                              "grades mutants of the solution with the assignment's tests (pytest and io kinds)")
    started = time.monotonic()
    solution = dict(assignment.solution)
    ref_started = time.monotonic()
    reference = grader.grade_files(assignment, {**solution}, GradeRequest(
        grader=assignment.name, files=solution, submission_id=f"mutants-{assignment.name}-reference",
        label="mutants-ref"))
    ref_seconds = time.monotonic() - ref_started
    if not reference.correct:
        failing = [t.name for t in reference.tests if t.status is not TestStatus.passed]
        raise AssignmentError(f"{assignment.root / 'solution'}: the reference solution scores "
                              f"{reference.score:g}/{reference.max_score:g} (failing: {', '.join(failing[:5])}); "
                              "mutation testing needs it at full marks")
    derived = mutant_assignment(assignment, ref_seconds, len(reference.tests))
    grader.store.share(derived, assignment)

    def one(mutant: Mutant) -> MutantResult:
        began = time.monotonic()
        base = dict(id=mutant.id, file=mutant.file, operator=mutant.operator, line=mutant.line,
                    description=mutant.description, max_score=assignment.max_points, diff=mutant.diff())
        try:
            report = grader.grade_files(derived, mutant.files(solution), GradeRequest(
                grader=assignment.name, submission_id=f"mutant-{mutant.id}", label=f"mutant-{mutant.id}"))
            status, failing = classify(report)
            return MutantResult(**base, status=status, score=report.score, failing=failing,
                                seconds=time.monotonic() - began)
        except (InfraError, AssignmentError, OSError) as exc:
            return MutantResult(**base, status=MutantStatus.not_graded, error=f"{type(exc).__name__}: {exc}",
                                seconds=time.monotonic() - began)

    results = in_parallel(one, mutants, jobs, progress)
    return MutationReport(assignment=assignment.name, version=assignment.version,
                          test_timeout_s=derived.config.test_timeout_s, seconds=time.monotonic() - started,
                          results=results)


def render(report: MutationReport, show_killed: bool = False) -> str:
    """The score line, the counts, then each surviving mutant as a unified diff."""
    n = len(report.results)
    lines = [
        f"{report.assignment} ({report.version}): mutation score {report.score:.2f} "
        f"({report.graded - len(report.survived)}/{report.graded} mutants killed) in {report.seconds:.1f}s",
        f"  killed by a failing test: {report.count(MutantStatus.killed)}",
        f"  timed out (counted as killed; per-test limit {report.test_timeout_s:g}s): "
        f"{report.count(MutantStatus.timeout)}",
        f"  failed to load (counted as killed): {report.count(MutantStatus.load_error)}",
        f"  survived: {len(report.survived)}",
    ]
    if report.count(MutantStatus.not_graded):
        lines.append(f"  not graded (infrastructure): {report.count(MutantStatus.not_graded)} of {n}")
    for r in report.results:
        if r.status is MutantStatus.not_graded:
            lines.append(f"  not graded: {r.id} {r.file}:{r.line}: {r.error}")
    for r in report.survived:
        lines.append("")
        lines.append(f"SURVIVED {r.id} {r.file}:{r.line} {r.operator}: {r.description}")
        lines.append(r.diff.rstrip("\n"))
    if show_killed:
        lines.append("")
        for r in report.results:
            if r.status is not MutantStatus.survived:
                why = f" by {', '.join(r.failing[:3])}" if r.status is MutantStatus.killed and r.failing else ""
                lines.append(f"{r.status.value:<10} {r.id} {r.file}:{r.line} {r.operator}: {r.description}{why}")
    return "\n".join(lines)
