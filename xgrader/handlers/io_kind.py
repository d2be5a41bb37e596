"""The "io" kind: expression cases (one sandbox, one batched round trip) and
program cases (the entry file run as a program per stdin), compared on the
host with expected values computed once from the reference solution."""

from __future__ import annotations

import ast
import functools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from xgrader import explain
from xgrader.assignment import Assignment, Case, CompareSpec
from xgrader.backends.base import SandboxError, SandboxJob, SandboxResult, Verdict
from xgrader.errors import AssignmentError, InfraError
from xgrader.handlers import scoring
from xgrader.handlers.compare import text_matches, value_matches
from xgrader.handlers.context import MIN_WAIT_S, GradeContext
from xgrader.handlers.student import (
    RequestTimeout,
    RunnerDied,
    StudentRunner,
    clean_sample,
    sample_after,
)
from xgrader.handlers.values import BadValue, decode, show
from xgrader.report import Evidence, GradeReport, TestReport, TestStatus

log = structlog.get_logger(__name__)

MARKER = "##xgrader-error## "
SAMPLE_MARKER = "##xgrader-sample## "
SYNTAX_TYPES = scoring.SYNTAX_TYPES


@dataclass
class CaseRun:
    """One case's raw outcome from a sandbox (student or reference)."""

    status: str                       # ok | error | timeout | died
    reply: dict[str, Any] = field(default_factory=dict)
    verdict: Verdict | None = None
    sample: list[list[Any]] | None = None   # where a timed-out case was (stack sample)


@functools.lru_cache(maxsize=4096)
def _call_of(expr: str) -> ast.Call | None:
    """The call an expression `f(...)` is, else None (not a call, or not Python)."""
    try:
        body = ast.parse(expr, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return body if isinstance(body, ast.Call) else None


@functools.lru_cache(maxsize=4096)
def watched(expr: str) -> str:
    """`f(a, b)` -> `__xgrader_call__(f, a, b)`: the runner makes the same call
    and notes whether it changed its arguments in place (PROTOCOL.md). Any
    other expression is sent as it is."""
    call = _call_of(expr)
    if call is None:
        return expr
    wrapped = ast.Call(func=ast.Name("__xgrader_call__", ast.Load()), args=[call.func, *call.args],
                       keywords=call.keywords)
    return ast.unparse(ast.fix_missing_locations(ast.Expression(wrapped)))


@functools.lru_cache(maxsize=4096)
def top_call(expr: str) -> str | None:
    """`f` of an expression `f(...)` (whose value is what f returned), else None."""
    call = _call_of(expr)
    if call is None:
        return None
    return call.func.id if isinstance(call.func, ast.Name) else \
        call.func.attr if isinstance(call.func, ast.Attribute) else None


@functools.lru_cache(maxsize=4096)
def called_names(expr: str) -> tuple[str, ...]:
    """Names the expression calls, in order (`top_words`, ...): which student function a case tests."""
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ()
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call)), key=lambda n: n.col_offset)
    out = []
    for n in calls:
        name = n.func.id if isinstance(n.func, ast.Name) else n.func.attr if isinstance(n.func, ast.Attribute) else None
        if name and name not in out:
            out.append(name)
    return tuple(out)


def _timeout(assignment: Assignment, case: Case) -> float:
    return case.timeout_s or assignment.config.test_timeout_s


# -- running -----------------------------------------------------------------

def evaluate_expressions(assignment: Assignment, files: dict[str, bytes], ctx: GradeContext,
                         cases: list[tuple[int, Case]]) -> tuple[dict[str, Any], dict[int, CaseRun]]:
    """(load reply, runs by case index). One sandbox, one batch request; a case
    that times out or kills the runner fails alone and the rest continue in a
    fresh sandbox."""
    cfg = assignment.config
    runner = StudentRunner(ctx.backend, files, ctx.limits, module=cfg.module, entry=cfg.entry,
                           label=ctx.label, submission_id=ctx.submission_id, after_reply=ctx.after_reply,
                           prelude=assignment.prelude_name, sample=assignment.explains("time_limit"))
    load_timeout = cfg.test_timeout_s + ctx.slack_s()
    runs: dict[int, CaseRun] = {}

    def load() -> dict[str, Any]:
        started = time.monotonic()
        try:
            return runner.restart(ctx.left_s(load_timeout))
        except RequestTimeout as exc:
            return {"ok": False, "timeout": True, "sample": exc.sample}
        except RunnerDied as exc:
            return {"ok": False, "died": True, "verdict": exc.verdict}
        finally:   # importing the module is the student's time; starting the sandbox is not
            ctx.charge(time.monotonic() - started - runner.last_start_s)

    # Every case has its own timeout, and all of them share the submission's
    # running time (GradeContext.clock; the reference solution: wall_s plus
    # start-up slack for the batch): cases not reached by then fail as timeouts.
    deadline = time.monotonic() + ctx.limits.wall_s + ctx.slack_s()
    try:
        first = load()
        if not first.get("ok"):
            return first, runs
        pending = list(cases)
        while pending:
            if ctx.out_of_time() or (ctx.clock is None and time.monotonic() >= deadline):
                for i, _ in pending:
                    runs[i] = CaseRun("timeout", verdict=Verdict.wall_time)
                break
            batch: dict[str, Any] = {"op": "batch", "exprs": [c.expr for _, c in pending]}
            if assignment.explains("mutated_argument"):
                batch["watched"] = [watched(c.expr) for _, c in pending]
            if assignment.explains("time_limit"):
                batch["sample_after"] = [sample_after(_timeout(assignment, c)) for _, c in pending]
            rid = runner.send(batch)
            for pos, (index, case) in enumerate(pending):
                wait = ctx.left_s(_timeout(assignment, case)) if ctx.clock is not None else \
                    max(min(_timeout(assignment, case), deadline - time.monotonic()), MIN_WAIT_S)
                started = time.monotonic()
                try:
                    reply = runner.receive(rid, wait, index=pos)
                except RequestTimeout as exc:
                    runs[index] = CaseRun("timeout", verdict=Verdict.wall_time, sample=exc.sample)
                    break
                except RunnerDied as exc:
                    runs[index] = CaseRun("died", verdict=exc.verdict)
                    break
                finally:
                    ctx.charge(time.monotonic() - started)
                if reply.get("done"):  # only a forged reply can end early: the rest are missing
                    break
                runs[index] = CaseRun("ok" if reply.get("ok") else "error", reply=reply)
            rest = [(i, c) for i, c in pending if i not in runs]
            if len(rest) == len(pending):
                for i, _ in rest:
                    runs[i] = CaseRun("died")
                break
            pending = rest
            if pending:
                again = load()
                if not again.get("ok"):
                    for i, _ in pending:
                        runs[i] = CaseRun("died", verdict=again.get("verdict"))
                    break
        return first, runs
    finally:
        runner.close()


def run_program(assignment: Assignment, files: dict[str, bytes], ctx: GradeContext,
                case: Case) -> SandboxResult:
    wall = ctx.left_s(_timeout(assignment, case) + ctx.slack_s())
    limits = ctx.limits.model_copy(update={"wall_s": min(wall, ctx.settings.limit_ceilings.wall_s)})
    options = ["--sample-after", f"{_timeout(assignment, case):g}"] if assignment.explains("time_limit") else []
    if assignment.prelude_name:
        options += ["--prelude", assignment.prelude_name]
    job = SandboxJob(argv=ctx.backend.python_argv("exec", assignment.config.entry, *options), files=files,
                     stdin=(case.stdin or "").encode(), limits=limits, label=ctx.label)
    try:
        result = ctx.backend.run(job)
    except SandboxError as exc:
        raise InfraError(f"program sandbox failed: {exc}") from exc
    ctx.charge(result.wall_s)   # from the program's start: its sandbox's creation is not charged
    if result.verdict is Verdict.sandbox_error:
        raise InfraError(f"program sandbox failed: {result.error}")
    return result


def program_error(result: SandboxResult) -> dict[str, Any] | None:
    """The runner's crash description (last MARKER line of stderr), if any."""
    for line in reversed(result.stderr.splitlines()):
        if line.startswith(MARKER):
            try:
                err = json.loads(line[len(MARKER):])
            except ValueError:
                return None
            return err if isinstance(err, dict) else None
    return None


def program_sample(result: SandboxResult) -> list[list[Any]] | None:
    """Where a program was when it ran past its case's time (the runner's
    last SAMPLE_MARKER line on stderr; untrusted, checked like any sample)."""
    for line in reversed(result.stderr.splitlines()):
        if line.startswith(SAMPLE_MARKER):
            try:
                return clean_sample(json.loads(line[len(SAMPLE_MARKER):]))
            except ValueError:
                return None
    return None


def _program_run(result: SandboxResult) -> CaseRun:
    if result.verdict is not Verdict.ok:
        return CaseRun("timeout" if result.verdict is Verdict.wall_time else "died",
                       reply={"stdout": result.stdout}, verdict=result.verdict,
                       sample=program_sample(result))
    if result.exit_code != 0:
        err = program_error(result) or {"type": "SystemExit", "message": f"exit status {result.exit_code}"}
        return CaseRun("error", reply={"stdout": result.stdout, "error": err})
    return CaseRun("ok", reply={"stdout": result.stdout})


# -- reference -------------------------------------------------------------------

def compute_reference(assignment: Assignment, ctx: GradeContext) -> dict[str, Any]:
    """Expected results of every case without an explicit `expected`, from solution/."""
    files = assignment.sandbox_files(assignment.solution)
    need = [(i, c) for i, c in enumerate(assignment.cases) if c.expected is None]
    out: dict[str, Any] = {}
    exprs = [(i, c) for i, c in need if c.expr is not None]
    if exprs:
        load, runs = evaluate_expressions(assignment, files, ctx, exprs)
        if not load.get("ok"):
            raise reference_error(f"{assignment.root / 'solution'}: the reference solution does not load", load)
        for i, _ in exprs:
            run = runs[i]
            if run.status != "ok":
                raise reference_error(f"{assignment.root / 'tests/cases.toml'}: {assignment.case_name(i)}: "
                                      "the reference solution failed", run.reply, run.status)
            out[str(i)] = {k: run.reply.get(k) for k in ("value", "repr", "stdout")}
    for i, case in need:
        if case.stdin is None:
            continue
        run = _program_run(run_program(assignment, files, ctx, case))
        if run.status != "ok":
            raise reference_error(f"{assignment.root / 'tests/cases.toml'}: {assignment.case_name(i)}: "
                                  "the reference solution failed", run.reply, run.status)
        out[str(i)] = {"stdout": run.reply.get("stdout", "")}
    return {"cases": out}


def reference_error(what: str, reply: dict[str, Any], status: str = "") -> Exception:
    """The reference raising or exiting non-zero is the assignment's fault. No
    answer in time (or none at all) is the host's - a loaded machine, a
    sandbox gone - and the student's submission must not be graded against
    it: an infrastructure failure, retried, and nothing cached."""
    detail = describe_failure(reply)
    if status == "timeout" or reply.get("timeout") or detail == "no answer":
        return InfraError(f"{what} ({status or 'load'}: {detail}; an infrastructure failure, retried)")
    return AssignmentError(f"{what} ({status + ': ' if status else ''}{detail})")


def describe_failure(reply: dict[str, Any]) -> str:
    """Why the reference solution failed, for its author: exception, message, where."""
    err = reply.get("error")
    if isinstance(err, dict):
        return f"{err.get('type')}: {str(err.get('message'))[:200]}{where(err)}"
    if reply.get("timeout"):
        return "timed out"
    if reply.get("died"):
        verdict = reply.get("verdict")
        return f"the process ended ({getattr(verdict, 'value', verdict) or 'killed'})"
    return "no answer"


_FRAME = re.compile(r'\s*File "([^"]+)", line (\d+)')


def where(err: dict[str, Any]) -> str:
    """' at FILE, line N: CODE': a syntax error's position, or the last frame
    of the runner's (student-frames-only) traceback; '' when unknown."""
    name, line, code = err.get("filename"), err.get("lineno"), err.get("text")
    if not line:
        rows = str(err.get("traceback") or "").splitlines()
        for i, row in enumerate(rows):
            frame = _FRAME.match(row)
            if frame:
                name, line = frame.group(1), frame.group(2)
                after = rows[i + 1].strip() if i + 1 < len(rows) else ""
                code = after if after and not _FRAME.match(after) and set(after) != {"^"} else None
    if not line:
        return ""
    code = str(code or "").strip()
    return f" at {f'{name}, ' if name else ''}line {line}" + (f": {code[:120]}" if code else "")


# -- grading -----------------------------------------------------------------------

@dataclass
class Expected:
    value: Any = None
    text: str = ""           # repr (value checks) or text (output / program checks)
    pattern: str | None = None


def _expected_for(assignment: Assignment, index: int, case: Case, reference: dict[str, Any]) -> Expected:
    spec = case.compare or assignment.config.compare
    if case.expected is not None:
        if spec.mode == "regex":
            return Expected(text=case.expected, pattern=case.expected)
        if case.expr is not None and case.check == "value":
            try:
                value = ast.literal_eval(case.expected)
            except (ValueError, SyntaxError) as exc:
                raise AssignmentError(f"{assignment.root / 'tests/cases.toml'}: {assignment.case_name(index)}: "
                                      f"field expected: not a Python literal ({exc})") from None
            return Expected(value=value, text=show(value))
        return Expected(text=case.expected)
    ref = reference["cases"][str(index)]
    if case.expr is not None and case.check == "value":
        return Expected(value=decode(ref.get("value")), text=str(ref.get("repr") or ""))
    return Expected(text=str(ref.get("stdout") or ""))


def missing_name(err: dict[str, Any], defined: dict[str, Any] | None) -> str | None:
    """The name a case needed that the submission does not define: a NameError
    (or a failed import) raised by the test expression itself, before any of
    the student's code ran. None for errors inside the student's code."""
    if err.get("frames") or str(err.get("traceback") or "").strip():
        return None   # raised inside the student's own code
    etype, message = err.get("type"), str(err.get("message") or "")
    m = None
    if etype == "NameError":
        m = re.match(r"name '(\w+)' is not defined", message)
    elif etype in ("ModuleNotFoundError", "ImportError"):
        m = re.match(r"No module named '([\w.]+)'", message)
    elif etype == "AttributeError":
        m = re.match(r"module '[\w.]+' has no attribute '(\w+)'", message)
    if m is None or (etype == "NameError" and m.group(1) in (defined or {})):
        return None
    return m.group(1)


def _judge(assignment: Assignment, index: int, case: Case, run: CaseRun | None, expected: Expected,
           findings: scoring.Findings, loaded: dict[str, Any] | None) -> TestReport:
    """One case's TestReport. `loaded`: the names the module defined, None when
    it did not load (its cases then did not run)."""
    cfg = assignment.config
    limit = cfg.feedback.max_chars
    spec: CompareSpec = case.compare or cfg.compare
    reply = run.reply if run else {}
    stdout = str(reply.get("stdout") or "")
    status, actual, message, etype = TestStatus.missing, None, None, None
    err: dict[str, Any] | None = None
    value: Any = None
    has_values = False
    if run is None:
        if loaded is None and case.expr is not None:
            status, message = TestStatus.not_run, "Not run: your code did not load (see above)."
        else:
            message = "No answer for this test."
    elif run.status == "timeout":
        status, message = TestStatus.timeout, f"Took longer than {_timeout(assignment, case):g} s."
        findings.limits.add(scoring.Outcome.time_limit)
    elif run.status == "died":
        status = TestStatus.error
        hit = findings.note_limit(run.verdict)
        message = scoring.LIMIT_TEXT[hit][0] if hit else scoring.STOPPED.title
        if not hit and scoring.STOPPED not in findings.explanations:
            findings.runtime_error = True
            findings.explanations.append(scoring.STOPPED)
    elif run.status == "error":
        err = reply.get("error") or {}
        etype = str(err.get("type") or "Exception")
        absent = missing_name(err, loaded) if case.expr is not None else None
        if absent is not None:
            # Not a mistake in what the case checks: the case could not run.
            status, message = TestStatus.not_run, f"Not run: your code does not define {absent}."
            if absent not in findings.missing:
                findings.missing.append(absent)
        else:
            status = TestStatus.error
            message = f"{etype}: {err.get('message') or ''}".strip()
            findings.runtime_error = True
    else:
        if case.expr is not None and case.check == "value":
            try:
                value = decode(reply.get("value"))
                actual = str(reply.get("repr") or show(value))
                ok = value_matches(value, expected.value, spec, expected.pattern)
                has_values = expected.pattern is None
            except BadValue:
                actual, ok = "(a value that cannot be compared)", False
        else:
            actual = stdout
            ok = text_matches(stdout, expected.pattern or expected.text, spec)
            if case.expr is not None:   # output check: the call's value says "returned instead of printing"
                try:
                    value = decode(reply.get("value"))
                except BadValue:
                    value = None
        status = TestStatus.passed if ok else TestStatus.failed
    name = assignment.case_name(index)
    evidence = Evidence(
        input=case.expr if case.expr is not None else case.stdin, expected=expected.text, actual=actual,
        expected_value=expected.value if has_values else None, actual_value=value, has_values=has_values,
        check="program" if case.stdin is not None else case.check,
        function=top_call(case.expr) if case.expr else None,
        called=list(called_names(case.expr)) if case.expr else [],
        output=stdout, error=err, sample=run.sample if run else None, timeout_s=_timeout(assignment, case),
        mutated=bool(reply.get("mutated")), secrets=[] if case.visible else case_secrets(assignment, case, expected),
    )
    if not case.visible:
        return TestReport(name=name, status=status, weight=case.weight, visible=False, exception_type=etype,
                          test_id=name, evidence=evidence)
    shown_output = stdout if (case.check == "value" and case.expr is not None) else None
    return TestReport(
        name=name, status=status, weight=case.weight, visible=True,
        input=scoring.cap(case.expr if case.expr is not None else case.stdin, limit),
        expected=scoring.cap(expected.text, limit), actual=scoring.cap(actual, limit),
        message=scoring.cap(message, limit),
        output=scoring.cap(shown_output, limit) if cfg.feedback.show_output and shown_output else None,
        exception_type=etype, test_id=name, evidence=evidence,
    )


def case_secrets(assignment: Assignment, case: Case, expected: Expected) -> list[str]:
    """What a hidden case must not reveal: the literals of its input and its
    expected result (numbers, and words the student has not been shown)."""
    atoms = explain.atoms_of_text(case.expr or "") | explain.atoms_of_text(case.stdin or "")
    atoms |= explain.atoms_of_value(expected.value) if expected.value is not None else set()
    atoms |= explain.atoms_of_text(expected.text or "")
    return sorted(a for a in atoms if a.lstrip("-").replace(".", "", 1).isdigit()
                  or a.lower() not in assignment.public_words)


def grade_io(assignment: Assignment, files: dict[str, bytes], ctx: GradeContext) -> GradeReport:
    cases = list(enumerate(assignment.cases))
    reference: dict[str, Any] = {"cases": {}}
    if any(c.expected is None for _, c in cases):
        untimed = ctx.untimed()   # the reference solution is not on the submission's clock
        reference = ctx.store.get(assignment, lambda: compute_reference(assignment, untimed))
    expected = {i: _expected_for(assignment, i, c, reference) for i, c in cases}
    files = assignment.sandbox_files(files)
    findings = scoring.Findings()
    runs: dict[int, CaseRun] = {}
    loaded: dict[str, Any] | None = {}

    exprs = [(i, c) for i, c in cases if c.expr is not None]
    if exprs:
        load, expr_runs = evaluate_expressions(assignment, files, ctx, exprs)
        if not load.get("ok"):
            early = _load_failure(assignment, load, findings, ctx)
            if early is not None:
                return early
            loaded = None
        else:
            loaded = load.get("names") or {}
            findings.missing = scoring.missing_required(assignment, loaded)
        runs.update(expr_runs)
    for i, case in cases:
        if case.stdin is None:
            continue
        if ctx.out_of_time():   # the submission's running time is spent: not started
            runs[i] = CaseRun("timeout", verdict=Verdict.wall_time)
            continue
        run = _program_run(run_program(assignment, files, ctx, case))
        err = run.reply.get("error") or {}
        if err.get("type") in SYNTAX_TYPES:
            return scoring.syntax_report(assignment, err, _placeholders(assignment), ctx.source)
        runs[i] = run
    tests = [_judge(assignment, i, c, runs.get(i), expected[i], findings, loaded) for i, c in cases]
    return scoring.build(assignment, tests, findings, ctx.source)


def _placeholders(assignment: Assignment) -> list[TestReport]:
    return [TestReport(name=assignment.case_name(i), status=TestStatus.not_run, weight=c.weight,
                       visible=c.visible, test_id=assignment.case_name(i)) for i, c in enumerate(assignment.cases)]


def _load_failure(assignment: Assignment, load: dict[str, Any], findings: scoring.Findings,
                  ctx: GradeContext) -> GradeReport | None:
    """The module did not load: a syntax error ends grading; a crash, timeout or
    limit at import fails every expression case (they did not run)."""
    return scoring.load_failure(assignment, load, findings, ctx.source,
                                lambda err: scoring.syntax_report(assignment, err, _placeholders(assignment),
                                                                  ctx.source))
