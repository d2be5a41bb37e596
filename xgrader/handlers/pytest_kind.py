"""The "pytest" kind: the instructor's tests run in a test sandbox (no student
code), the student's code in a student sandbox; the host relays every proxied
call between them with a per-test time budget.

The list of tests is fixed per assignment version by a reference run against
solution/ (cached like expected values): the student cannot make tests
disappear (a test file that fails to import, a crash mid-run). Every test of
that list that did not report is `missing`, a failure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from xgrader.assignment import Assignment
from xgrader.errors import AssignmentError, InfraError
from xgrader.handlers import scoring
from xgrader.handlers.context import GradeContext
from xgrader.handlers.io_kind import SYNTAX_TYPES, describe_failure, where
from xgrader.handlers.student import RequestTimeout, RunnerDied, StudentRunner
from xgrader.report import Explanation, GradeReport, TestReport, TestStatus
from xgrader.backends.base import (
    RUNNER_DIR, ChannelError, RunningSandbox, SandboxError, SandboxJob, SandboxResult, Verdict, clean_text,
)

log = structlog.get_logger(__name__)

TEST_DIRS = ("tests", "public_tests")
RELAYED_OPS = {"call", "getattr", "special"}
RELAYED_KEYS = ("op", "target", "method", "name", "args", "kwargs")
STARTUP_S = 15.0   # pytest start-up and collection in the test sandbox


@dataclass
class RelayRun:
    load: dict[str, Any]
    collected: list[str] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    host: dict[str, tuple[str, Verdict | None]] = field(default_factory=dict)  # nodeid -> (timeout|died, verdict)
    test_box: SandboxResult | None = None
    finished: bool = False


def _test_files(assignment: Assignment) -> dict[str, bytes]:
    files = {f"tests/{k}": v for k, v in assignment.tests.items()}
    files.update({f"public_tests/{k}": v for k, v in assignment.public_tests.items()})
    files.update({k: v for k, v in assignment.files.items() if k not in files})
    return files


def _budget(assignment: Assignment, ctx: GradeContext, n_tests: int) -> float:
    wanted = max(ctx.limits.wall_s, n_tests * assignment.config.test_timeout_s) + STARTUP_S
    return min(wanted, ctx.settings.limit_ceilings.wall_s + STARTUP_S, ctx.settings.job_timeout_s * 0.8)


def relay(assignment: Assignment, files: dict[str, bytes], ctx: GradeContext, n_tests: int) -> RelayRun:
    cfg = assignment.config
    budget = _budget(assignment, ctx, n_tests)
    student_limits = ctx.limits.model_copy(update={"wall_s": budget})
    student = StudentRunner(ctx.backend, files, student_limits, module=cfg.module, entry=cfg.entry,
                            label=ctx.label, submission_id=ctx.submission_id, after_reply=ctx.after_reply)
    load_timeout = cfg.test_timeout_s + ctx.slack_s()

    def load() -> dict[str, Any]:
        try:
            return student.restart(load_timeout)
        except RequestTimeout:
            return {"ok": False, "timeout": True}
        except RunnerDied as exc:
            return {"ok": False, "died": True, "verdict": exc.verdict}

    run = RelayRun(load=load())
    if not run.load.get("ok"):
        student.close()
        return run
    names = run.load.get("names") or {}
    dirs = [d for d in TEST_DIRS if (assignment.tests if d == "tests" else assignment.public_tests)]
    # pytest needs more room than the student's code may get; the operator's defaults do.
    test_limits = ctx.settings.limits_for(ctx.settings.default_limits).model_copy(update={"wall_s": budget})
    job = SandboxJob(argv=["python3", "-I", f"{RUNNER_DIR}/pytest_side/launch.py", *dirs],
                     files=_test_files(assignment), limits=test_limits, channel=True, label=ctx.label)
    try:
        box = ctx.backend.start(job)
    except SandboxError as exc:
        student.close()
        raise InfraError(f"test sandbox did not start: {exc}") from exc
    try:
        box.channel.send({"op": "hello", "module": cfg.module, "names": names})
        _serve(box, student, run, assignment, budget, load)
    finally:
        box.kill()
        run.test_box = box.wait(timeout=2.0)
        student.close()
    if run.test_box.verdict is Verdict.sandbox_error:
        raise InfraError(f"test sandbox failed: {run.test_box.error}")
    return run


def _serve(box: RunningSandbox, student: StudentRunner, run: RelayRun, assignment: Assignment,
           budget: float, load: Any) -> None:
    deadline = time.monotonic() + budget
    per_test = assignment.config.test_timeout_s
    current: str | None = None
    spent = 0.0
    student_ok = True
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            msg = box.channel.recv(left)
        except TimeoutError:
            return
        except ChannelError:
            return
        if not isinstance(msg, dict):
            continue
        op = msg.get("op")
        if op == "collected" and not run.collected:
            run.collected = [str(t) for t in msg.get("tests") or []]
        elif op == "start":
            current, spent = str(msg.get("nodeid")), 0.0
        elif op == "result":
            run.results[str(msg.get("nodeid"))] = msg
        elif op == "done":
            run.finished = True
            return
        elif op in RELAYED_OPS:
            request = {k: msg[k] for k in RELAYED_KEYS if k in msg}
            began = time.monotonic()
            timeout = max(per_test - spent, 0.05)
            try:
                if not student_ok:
                    raise RunnerDied(None)
                reply = student.request(request, timeout)
            except RequestTimeout:
                reply = {"ok": False, "timeout": True}
                if current:
                    run.host[current] = ("timeout", Verdict.wall_time)
                student_ok = load().get("ok", False)
            except RunnerDied as exc:
                reply = {"ok": False, "died": True,
                         "verdict": exc.verdict.value if exc.verdict else None}
                if current:
                    run.host.setdefault(current, ("died", exc.verdict))
                student_ok = student_ok and load().get("ok", False)
            spent += time.monotonic() - began
            try:
                box.channel.send({**reply, "id": msg.get("id")})
            except ChannelError:
                return


# -- reference -----------------------------------------------------------------

def compute_reference(assignment: Assignment, ctx: GradeContext) -> dict[str, Any]:
    files = {**assignment.files, **assignment.solution}
    n_guess = max(20, sum(data.count(b"def test_") for data in assignment.tests.values()) * 5)
    run = relay(assignment, files, ctx, n_guess)
    if not run.load.get("ok"):
        raise AssignmentError(f"{assignment.root / 'solution'}: the reference solution does not load "
                              f"({describe_failure(run.load)})")
    if not run.collected:
        tail = clean_text(run.test_box.stdout if run.test_box else "", 4000)[-1500:]
        raise AssignmentError(f"{assignment.root / 'tests'}: pytest collected no tests ({tail.strip()})")
    failing = [t for t in run.collected if (run.results.get(t) or {}).get("outcome") not in ("passed", "skipped")]
    if failing:
        log.warning("reference_solution_fails_tests", assignment=assignment.name, tests=failing[:10])
    # Why, for `xgrader check` (the reference's own run: nothing here is a student's).
    why = {t: _failure(run.results.get(t), run.host.get(t)) for t in failing[:20]}
    return {"tests": run.collected, "failing": failing, "failing_why": why}


def _failure(result: dict[str, Any] | None, host: tuple[str, Verdict | None] | None) -> str:
    if host is not None:
        return "timed out" if host[0] == "timeout" else f"the process ended ({host[1].value if host[1] else 'killed'})"
    if result is None:
        return "did not report (the test run stopped early)"
    text = clean_text(str(result.get("message") or result.get("outcome") or "failed"), 300)
    return text + where({"traceback": result.get("traceback")})


# -- grading -------------------------------------------------------------------

def _display_name(nodeid: str, visible: bool, counters: dict[str, int]) -> str:
    short = nodeid.split("/", 1)[1] if nodeid.startswith(TEST_DIRS) else nodeid
    if visible:
        return short
    # Hidden: the function name only; parameters could show inputs or expected values.
    base = short.split("::")[-1].split("[")[0]
    counters[base] = counters.get(base, 0) + 1
    return base if counters[base] == 1 else f"{base} #{counters[base]}"


def _status(result: dict[str, Any] | None, host: tuple[str, Verdict | None] | None) -> TestStatus:
    if host is not None and host[0] == "timeout":
        return TestStatus.timeout
    if result is None:
        return TestStatus.missing
    outcome = result.get("outcome")
    if host is not None and outcome != "passed":
        return TestStatus.error
    return {"passed": TestStatus.passed, "failed": TestStatus.failed, "error": TestStatus.error,
            "timeout": TestStatus.timeout}.get(str(outcome), TestStatus.failed)


def grade_pytest(assignment: Assignment, files: dict[str, bytes], ctx: GradeContext) -> GradeReport:
    reference = ctx.store.get(assignment, lambda: compute_reference(assignment, ctx))
    canonical: list[str] = reference["tests"]
    cfg = assignment.config
    limit = cfg.feedback.max_chars
    run = relay(assignment, {**assignment.files, **files}, ctx, len(canonical))
    findings = scoring.Findings()
    load = run.load
    err = load.get("error") or {}
    placeholders = []
    counters: dict[str, int] = {}
    for nodeid in canonical:
        weight, visible = assignment.rule_for(nodeid, public=nodeid.startswith("public_tests/"))
        placeholders.append((nodeid, weight, visible, _display_name(nodeid, visible, counters)))
    if not load.get("ok"):
        if err.get("type") in SYNTAX_TYPES or (err.get("type") == "ValueError" and "null bytes" in str(err.get("message"))):
            return scoring.syntax_report(assignment, err, [
                TestReport(name=n, status=TestStatus.failed, weight=w, visible=v) for _, w, v, n in placeholders])
        if load.get("timeout"):
            findings.limits.add(scoring.Outcome.time_limit)
        elif load.get("died"):
            if findings.note_limit(load.get("verdict")) is None:
                findings.runtime_error = True
                findings.explanations.append(scoring.STOPPED)
        else:
            findings.runtime_error = True
            findings.explanations.append(scoring.exception_explanation(err, "while loading", cfg.feedback.show_traceback))
    else:
        findings.missing = scoring.missing_required(assignment, load.get("names"))

    tests: list[TestReport] = []
    for nodeid, weight, visible, name in placeholders:
        result = run.results.get(nodeid)
        if result is not None and result.get("outcome") == "skipped":
            continue
        host = run.host.get(nodeid)
        status = _status(result, host)
        if host is not None and host[0] == "timeout":
            findings.limits.add(scoring.Outcome.time_limit)
        elif host is not None:
            if findings.note_limit(host[1]) is None and status is not TestStatus.passed:
                findings.runtime_error = True
                if scoring.STOPPED not in findings.explanations:
                    findings.explanations.append(scoring.STOPPED)
        result = result or {}
        etype = result.get("exception_type")
        etype = clean_text(str(etype), 100) if etype else None
        if status is TestStatus.error and result.get("traceback") is not None and etype:
            findings.runtime_error = True
            if scoring.is_signature_error(etype, result.get("traceback")):
                text = clean_text(str(result.get("message") or ""), 500).removeprefix("TypeError: ")
                sig = scoring.signature_explanation(text)
                if sig not in findings.explanations:
                    findings.explanations.append(sig)
            elif not any(e.title.startswith("Your code raised") for e in findings.explanations):
                if visible:
                    findings.explanations.append(Explanation(
                        title=f"Your code raised {etype} in test {name}",
                        detail=clean_text(str(result.get("message") or ""), limit),
                        traceback=(clean_text(str(result.get("traceback") or ""), limit) or None)
                        if cfg.feedback.show_traceback else None))
                else:  # the message could carry the hidden input: the type only
                    findings.explanations.append(Explanation(
                        title=f"Your code raised {etype} in a hidden test",
                        detail="Check how your code handles other inputs than the examples."))
        if not visible:
            tests.append(TestReport(name=name, status=status, weight=weight, visible=False, exception_type=etype))
            continue
        message = result.get("message")
        if status is TestStatus.timeout:
            message = f"Took longer than {cfg.test_timeout_s:g} s."
        elif status is TestStatus.missing:
            message = "This test did not report a result (the test run stopped early)."
        output = result.get("output") if cfg.feedback.show_output else None

        def text(v: Any) -> str | None:
            return scoring.cap(clean_text(str(v), limit * 2), limit) if v not in (None, "") else None

        tests.append(TestReport(
            name=name, status=status, weight=weight, visible=True,
            input=text(result.get("input")), expected=text(result.get("expected")),
            actual=text(result.get("actual")), message=text(message), output=text(output),
            exception_type=etype,
        ))
    if not tests:
        raise AssignmentError(f"{assignment.root / 'tests'}: every test was skipped")
    return scoring.build(assignment, tests, findings)
