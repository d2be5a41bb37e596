"""What the course-staff commands share (`xgrader grade`, `batch`, `check`):
reading a submission from disk the way the LMS would send it, grading many
submissions in parallel with one :class:`~xgrader.grading.Grader` (expected
values computed once, before the parallel part), and the checks `check` makes.

A submission on disk is one of:
  * a text file (``.py`` and other source suffixes): typed code, sent as
    ``student_response`` (saved under the assignment's entry file name);
  * any other file (``.ipynb``, ``.zip``, binary): one uploaded file;
  * a folder: every regular file in it (relative paths) uploaded as files.
This is the rule `xgrader demo` uses for ``samples/`` too.

Sample names carry the expected outcome: ``correct*`` must get full marks,
every other sample must get less (docs/assignments.md).
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from xgrader import grading
from xgrader.assignment import Assignment
from xgrader.errors import AssignmentError, InfraError
from xgrader.job import GradeRequest
from xgrader.report import GradeReport, Outcome, TestStatus

T = TypeVar("T")
R = TypeVar("R")

# Suffixes the demo harness sends as typed code (kept in step with demo_harness.TEXT_SUFFIXES).
TEXT_SUFFIXES = {".py", ".txt", ".js", ".c", ".java", ".md", ".sql", ".r", ".sh", ""}
CORRECT_PREFIX = "correct"
REFERENCE = "(reference solution)"   # its row in a check
MAX_SUBMISSION_BYTES = 20_000_000   # a stray huge folder is an error, not a memory spike


class SubmissionReadError(ValueError):
    """A submission on disk that cannot be read (missing, empty folder, too big)."""


def _skip(path: Path) -> bool:
    return path.name.startswith(".") or path.name in ("__pycache__", ".pytest_cache")


def submission_paths(folder: Path) -> list[Path]:
    """The submissions in a folder: every non-hidden file or subfolder, sorted."""
    return sorted(p for p in folder.iterdir() if not _skip(p) and (p.is_file() or p.is_dir()))


def read_files(folder: Path) -> dict[str, bytes]:
    """Every regular file under `folder` by relative posix path (no symlinks)."""
    files: dict[str, bytes] = {}
    total = 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        total += len(data)
        if total > MAX_SUBMISSION_BYTES:
            raise SubmissionReadError(f"{folder}: more than {MAX_SUBMISSION_BYTES} bytes")
        files[rel.as_posix()] = data
    return files


def request_for(paths: Iterable[Path], grader: str, submission_id: str = "", options: dict | None = None,
                hint_type: str | None = None) -> GradeRequest:
    """The GradeRequest the LMS would produce for these paths. One text file is
    typed code; one other file, one folder, or several paths are uploads."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise SubmissionReadError("no submission given")
    for p in paths:
        if not p.exists():
            raise SubmissionReadError(f"{p}: no such file or folder")
    response = ""
    files: dict[str, bytes] = {}
    if len(paths) == 1 and paths[0].is_file() and paths[0].suffix.lower() in TEXT_SUFFIXES:
        try:
            response = paths[0].read_text(encoding="utf-8")
        except UnicodeDecodeError:
            files[paths[0].name] = paths[0].read_bytes()
    else:
        for p in paths:
            if p.is_dir():
                for name, data in read_files(p).items():
                    files[name] = data
            else:
                files[p.name] = p.read_bytes()
        if not files:
            raise SubmissionReadError(f"{', '.join(map(str, paths))}: no files to submit")
    return GradeRequest(grader=grader, student_response=response, files=files,
                        submission_id=submission_id or paths[0].name, options=options or {},
                        hint_type=hint_type)


def expects_full_marks(sample: Path) -> bool:
    return sample.name.startswith(CORRECT_PREFIX)


def warm(grader: grading.Grader, assignment: Assignment) -> dict | None:
    """Compute (or load) the assignment's expected values once, so parallel
    graders all find them in the shared store instead of racing to compute.
    Returns them (None when every io case has its `expected`)."""
    ctx = grader.context(assignment)
    if assignment.config.kind == "image":
        if all(c.expected is not None for c in assignment.image_cases):
            return None
        from xgrader.handlers.image_kind import compute_reference
    elif assignment.config.kind == "mutation":
        from xgrader.handlers.mutation_kind import compute_reference
    elif assignment.config.kind == "io":
        if all(c.expected is not None for c in assignment.cases):
            return None
        from xgrader.handlers.io_kind import compute_reference
    else:
        from xgrader.handlers.pytest_kind import compute_reference
    return grader.store.get(assignment, lambda: compute_reference(assignment, ctx))


# -- grading many ------------------------------------------------------------

class Graded(BaseModel):
    """One submission's result in a batch (report None: it could not be graded)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    report: GradeReport | None = None
    error: str | None = None
    seconds: float = 0.0


def grade_one(grader: grading.Grader, request: GradeRequest, assignment: Assignment | None = None) -> GradeReport:
    """Grade like the pipeline does: an unusable upload is a graded answer
    (0 points and why, from the Grader); InfraError propagates."""
    return grader.grade(request, assignment)


def in_parallel(work: Callable[[T], R], items: list[T], jobs: int,
                progress: Callable[[int, int], None] | None = None) -> list[R]:
    """work(item) for every item, `jobs` threads at a time, results in input
    order; progress(done, total) after each one, one call at a time."""
    done = 0
    lock = threading.Lock()

    def counted(item: T) -> R:
        nonlocal done
        result = work(item)
        with lock:
            done += 1
            if progress:
                progress(done, len(items))
        return result

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(counted, items))


def grade_many(grader: grading.Grader, items: list[tuple[str, GradeRequest]], jobs: int = 2,
               progress: Callable[[int, int], None] | None = None,
               assignment: Assignment | None = None) -> list[Graded]:
    """Grade (name, request) pairs with `jobs` threads; results in input order.
    A submission that cannot be graded (infrastructure failure) is kept with
    its error: nothing is dropped."""

    def one(item: tuple[str, GradeRequest]) -> Graded:
        name, request = item
        started = time.monotonic()
        try:
            report = grade_one(grader, request, assignment)
            return Graded(name=name, report=report, seconds=time.monotonic() - started)
        except (InfraError, AssignmentError, OSError) as exc:
            return Graded(name=name, error=f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - started)

    return in_parallel(one, items, jobs, progress)


def useful_feedback(report: GradeReport) -> bool:
    """Does a student who missed marks learn what to fix? Yes if there is an
    explanation (syntax error, crash, limit...) or a visible failing test with
    something to compare; a bare score with only hidden failures is not."""
    if report.correct:
        return True
    if report.explanations:
        return True
    return any(t.visible and t.status is not TestStatus.passed
               and (t.expected or t.actual or t.message or t.input) for t in report.tests)


# -- check -------------------------------------------------------------------

class SampleCheck(BaseModel):
    name: str
    want_full: bool
    score: float | None = None
    max_score: float
    outcome: str
    ok: bool
    seconds: float = 0.0
    note: str = ""


class CheckResult(BaseModel):
    assignment: str
    ok: bool
    errors: list[str] = Field(default_factory=list)     # fail the check
    warnings: list[str] = Field(default_factory=list)   # reported, do not fail
    samples: list[SampleCheck] = Field(default_factory=list)


def lint(assignment: Assignment) -> tuple[list[str], list[str]]:
    """Errors and warnings about an assignment that loaded (pydantic validated the config)."""
    errors: list[str] = []
    warnings: list[str] = []
    cfg = assignment.config
    root = assignment.root
    if not assignment.solution:
        errors.append(f"{root / 'solution'}: no reference solution")
    elif cfg.kind != "mutation" and cfg.entry not in assignment.solution:
        errors.append(f"{root / 'solution'}: {cfg.entry} missing (the entry file students submit)")
    if not assignment.description.strip():
        warnings.append(f"{root / 'description.md'}: missing or empty (hints and students need it)")
    samples = submission_paths(root / "samples") if (root / "samples").is_dir() else []
    if not any(expects_full_marks(s) for s in samples):
        warnings.append(f"{root / 'samples'}: no correct* sample")
    wrong = [s for s in samples if not expects_full_marks(s)]
    if len(wrong) < 5:
        warnings.append(f"{root / 'samples'}: {len(wrong)} known-wrong samples (5 or more recommended)")
    if cfg.criteria:
        # Tests in no criterion count for nothing: most likely a pattern is off.
        if cfg.kind == "io":
            names = [assignment.case_name(i) for i in range(len(assignment.cases))]
        else:
            import re
            names = sorted({n.decode() for src in [*assignment.tests.values(), *assignment.public_tests.values()]
                            for n in re.findall(rb"^\s*def (test_\w+)", src, flags=re.M)})
        loose = [n for n in names if not any(assignment.in_rule(n, p) for c in cfg.criteria for p in c.tests)]
        if loose:
            warnings.append(f"{root / 'assignment.toml'}: tests in no [[criteria]] entry count for nothing: "
                            f"{', '.join(loose[:10])}")
    if cfg.kind in ("image", "mutation"):
        from xgrader.kind_config import lint_kind
        more_errors, more_warnings = lint_kind(assignment)
        errors += more_errors
        warnings += more_warnings
    elif cfg.kind == "pytest":
        unused = [r.pattern for r in cfg.tests if not _rule_used(assignment, r.pattern)]
        for pattern in unused:
            warnings.append(f"{root / 'assignment.toml'}: [[tests]] pattern {pattern!r} matches no test function name")
    else:
        if not any(c.visible for c in assignment.cases):
            warnings.append(f"{root / 'tests' / 'cases.toml'}: no visible case (students only see pass/fail)")
        names = [assignment.case_name(i) for i in range(len(assignment.cases))]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            errors.append(f"{root / 'tests' / 'cases.toml'}: duplicate case names {dupes}")
    warnings += _skill_warnings(assignment)
    return errors, warnings


def _test_function_names(assignment: Assignment) -> set[str]:
    import re

    names: set[bytes] = set()
    for source in list(assignment.tests.values()) + list(assignment.public_tests.values()):
        names.update(re.findall(rb"^\s*def (test_\w+)", source, flags=re.M))
    return {n.decode() for n in names}


def _skill_warnings(assignment: Assignment) -> list[str]:
    """When the assignment names skills: every test needs one, and every
    skill should be in the handlers root's skills.toml (else default BKT
    parameters apply)."""
    declared = assignment.declared_skills()
    if not declared:
        return []
    from xgrader.mastery.catalog import SKILLS_FILE, load_catalog

    out = []
    cfg = assignment.config
    if not cfg.skills:   # no default: each test must name its own
        if cfg.kind == "io":
            bare = [assignment.case_name(i) for i, c in enumerate(assignment.cases) if not c.skills]
        elif cfg.kind == "pytest":
            bare = sorted(n for n in _test_function_names(assignment) if not assignment.test_skills(n))
        else:
            bare = []
        if bare:
            out.append(f"{assignment.root}: tests without a skill: {', '.join(bare[:10])}"
                       f"{' ...' if len(bare) > 10 else ''} (give them `skills` or set a default `skills`)")
    handlers_root = assignment.handlers_root
    try:
        known = load_catalog(handlers_root).skills
    except AssignmentError as exc:
        return [*out, str(exc)]
    unknown = [s for s in declared if s not in known]
    if unknown:
        out.append(f"{handlers_root / SKILLS_FILE}: skills {unknown} not defined (default BKT parameters apply)")
    return out


def _rule_used(assignment: Assignment, pattern: str) -> bool:
    """Cheap static check: does the pattern match some `def test_...` name?"""
    from xgrader.assignment import name_matches

    decoded = _test_function_names(assignment)
    return any(name_matches(n, pattern) or name_matches(n, pattern.split("[")[0])
               for n in decoded) or "::" in pattern or "/" in pattern


def check_assignment(grader: grading.Grader, name: str, jobs: int = 2,
                     progress: Callable[[int, int], None] | None = None) -> CheckResult:
    """Load, lint, then grade the reference solution (must get full marks) and
    every sample (correct*: full marks; others: less)."""
    try:
        assignment = grader.registry.get(name)
    except AssignmentError as exc:
        return CheckResult(assignment=name, ok=False, errors=[str(exc)])
    errors, warnings = lint(assignment)
    if errors:
        return CheckResult(assignment=name, ok=False, errors=errors, warnings=warnings)
    try:
        reference = warm(grader, assignment) or {}
    except (AssignmentError, InfraError) as exc:
        return CheckResult(assignment=name, ok=False, errors=[str(exc)], warnings=warnings)
    # pytest kind: why the reference solution fails a test (its own run, hidden tests included).
    why = reference.get("failing_why") if isinstance(reference.get("failing_why"), dict) else {}
    samples_dir = assignment.root / "samples"
    # What must get full marks first: the reference solution, or for the
    # mutation kind (students submit tests) the author's model tests.
    first = ("(model tests)", dict(assignment.tests)) if assignment.config.kind == "mutation" \
        else (REFERENCE, dict(assignment.solution))
    items: list[tuple[str, GradeRequest]] = [
        (first[0], GradeRequest(grader=name, files=first[1], submission_id=f"check-{name}-solution"))]
    want = [True]
    for path in submission_paths(samples_dir) if samples_dir.is_dir() else []:
        try:
            items.append((f"samples/{path.name}", request_for([path], name, f"check-{name}-{path.name}")))
        except (SubmissionReadError, OSError) as exc:
            errors.append(f"{path}: {exc}")
            continue
        want.append(expects_full_marks(path))
    results = grade_many(grader, items, jobs=jobs, progress=progress)
    checks = []
    for graded, want_full in zip(results, want):
        report = graded.report
        if report is None:
            checks.append(SampleCheck(name=graded.name, want_full=want_full, max_score=assignment.max_points,
                                      outcome="not graded", ok=False, seconds=graded.seconds,
                                      note=graded.error or ""))
            continue
        full = report.correct and report.outcome is not Outcome.error
        ok = full == want_full
        note = ""
        if not ok:
            note = ("expected full marks" if want_full else "a known-wrong sample got full marks: "
                    "the tests miss this mistake")
            failing = [t.name for t in report.tests if t.status is not TestStatus.passed]
            if graded.name == REFERENCE and why:
                note += "; failing: " + "; ".join(f"{t.split('/', 1)[-1]}: {w}" for t, w in list(why.items())[:5])
            elif want_full and failing:
                note += f"; failing: {', '.join(failing[:5])}"
            elif want_full and report.explanations:
                note += f"; {report.explanations[0].title}"
        checks.append(SampleCheck(name=graded.name, want_full=want_full, score=report.score,
                                  max_score=report.max_score, outcome=report.outcome.value, ok=ok,
                                  seconds=graded.seconds, note=note))
        if ok and not useful_feedback(report):
            warnings.append(f"{graded.name}: lost points on hidden tests only, with no explanation: "
                            "the student sees a bare score (make a test visible or add a public test)")
    ok = not errors and all(c.ok for c in checks)
    return CheckResult(assignment=name, ok=ok, errors=errors, warnings=warnings, samples=checks)


def points(value: float, of: float | None = None) -> str:
    """A score for people: at most two decimals (8.57), never rounded up to
    full marks it did not get (9.999 of 10 shows 9.99)."""
    shown = round(value, 2)
    if of is not None and value < of <= shown:
        shown = math.floor(value * 100) / 100
    return f"{shown:.2f}".rstrip("0").rstrip(".")


def render_check(result: CheckResult) -> str:
    """A readable report of one assignment's check."""
    lines = [f"{'PASS' if result.ok else 'FAIL'}  {result.assignment}"]
    for e in result.errors:
        lines.append(f"  error:   {e}")
    for w in result.warnings:
        lines.append(f"  warning: {w}")
    if result.samples:
        width = max(len(c.name) for c in result.samples)
        for c in result.samples:
            score = "-" if c.score is None else f"{points(c.score, c.max_score)}/{points(c.max_score)}"
            want = "full marks" if c.want_full else "less than full"
            mark = "ok  " if c.ok else "FAIL"
            line = f"  {mark} {c.name.ljust(width)}  {score:>9}  {c.outcome:<16} want {want:<14} {c.seconds:5.1f}s"
            lines.append(line + (f"  {c.note}" if c.note else ""))
    return "\n".join(lines)
