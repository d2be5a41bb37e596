"""The "pytest" kind: the instructor's tests run in a test sandbox (no student
code), the student's code in a student sandbox. Where the backend can hand
descriptors to a sandbox (bwrap, unsafe), the host loads the submission and
then gives the runner's channel to the test sandbox, which calls the student's
code itself and bounds each test's calls by the test's budget
(sandbox/pytest_side/xgrader_proxy.py); elsewhere (docker), and after the
student's sandbox had to be replaced, the host relays every proxied call with
the same per-test budget.

The list of tests is fixed per assignment version by a reference run against
solution/ (cached like expected values): the student cannot make tests
disappear (a test file that fails to import, a crash mid-run). Every test of
that list that did not report is `missing`, a failure.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from xgrader.assignment import Assignment
from xgrader.errors import AssignmentError, InfraError
from xgrader.handlers import scoring
from xgrader.handlers.context import GradeContext
from xgrader.handlers.io_kind import reference_error, where
from xgrader.handlers.student import (
    RequestTimeout, RunnerDied, StudentRunner, clean_reply, clean_sample, sample_after,
)
from xgrader.handlers.values import BadValue, decode
from xgrader import explain
from xgrader.report import Evidence, GradeReport, TestReport, TestStatus
from xgrader.backends.base import (
    RUNNER_DIR, ChannelError, RunningSandbox, SandboxError, SandboxJob, SandboxResult, Verdict, clean_text,
)

log = structlog.get_logger(__name__)

TEST_DIRS = ("tests", "public_tests")
RELAYED_OPS = {"call", "getattr", "special"}
RELAYED_KEYS = ("op", "target", "method", "name", "args", "kwargs")
STARTUP_S = 15.0   # pytest start-up and collection in the test sandbox
# While the test sandbox calls the student's runner itself, nothing it sends
# needs an answer until `lost`: the host reads the channel at most this often
# (results queue in the pipe meanwhile; a box that dies leaves them there),
# instead of waking for each test's result.
QUIET_POLL_S = 0.005
TEMPLATE_ENV = "XGRADER_PYTEST_TEMPLATE"  # sandbox/pytest_side/xgrader_template.py reads it


@dataclass
class Trace:
    """What the host relayed for one test: evidence for the built-in
    explanations and the staff view (never shown as such to the student)."""

    target: str | None = None                  # the last student function called
    targets: list[str] = field(default_factory=list)
    reply: dict[str, Any] | None = None        # the last reply from the student's runner
    error: dict[str, Any] | None = None        # the last error it reported (type, message, frames...)
    output: list[str] = field(default_factory=list)
    mutated: bool = False
    sample: list[list[Any]] | None = None      # where the code was when a call timed out

    def note_call(self, request: dict[str, Any]) -> None:
        target = request.get("target")
        name = target if isinstance(target, str) else None
        if request.get("method"):
            name = str(request["method"])
        if request.get("op") == "call" and name and len(self.targets) < 50:
            self.target = name.split(".")[-1]
            if self.target not in self.targets:
                self.targets.append(self.target)

    def note_reply(self, reply: dict[str, Any], op: Any = "call") -> None:
        if op == "call":   # what a student function returned (not len(), iteration... of a handle)
            self.reply = reply
        if not reply.get("ok") and isinstance(reply.get("error"), dict):
            self.error = reply["error"]
        text = str(reply.get("stdout") or "")
        if text and sum(map(len, self.output)) < 20_000:
            self.output.append(text)
        self.mutated = self.mutated or bool(reply.get("mutated"))


class OutOfTime(Exception):
    """The submission's running time (GradeContext.clock) is spent."""


@dataclass
class RelayRun:
    load: dict[str, Any]
    collected: list[str] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    host: dict[str, tuple[str, Verdict | None]] = field(default_factory=dict)  # nodeid -> (timeout|died, verdict)
    traces: dict[str, Trace] = field(default_factory=dict)
    test_box: SandboxResult | None = None
    finished: bool = False
    refused: bool = False   # a collected session's job found the submission's names do not fit


def _test_files(assignment: Assignment) -> dict[str, bytes]:
    files = {f"tests/{k}": v for k, v in assignment.tests.items()}
    files.update({f"public_tests/{k}": v for k, v in assignment.public_tests.items()})
    files.update({k: v for k, v in assignment.files.items() if k not in files})
    return files


def _budget(assignment: Assignment, ctx: GradeContext, n_tests: int) -> float:
    wanted = max(ctx.limits.wall_s, n_tests * assignment.config.test_timeout_s) + STARTUP_S
    return min(wanted, ctx.settings.limit_ceilings.wall_s + STARTUP_S, ctx.settings.job_timeout_s * 0.8)


def template_of(assignment: Assignment, ctx: GradeContext, names: Any) -> list[str] | None:
    """[key, what a template server collects from] of this assignment
    version's test session (sandbox/pytest_side/xgrader_template.py): its
    tests and files (in the store's key), the reference solution's names
    (the proxy's at collection) and the test folders."""
    if not isinstance(names, dict):
        return None
    spec = json.dumps({"module": assignment.config.module, "names": names}, sort_keys=True)
    key = hashlib.sha256(f"{ctx.store.key(assignment)}\n{spec}\n{_dirs(assignment)}".encode()).hexdigest()
    return [key, spec]


def _dirs(assignment: Assignment) -> list[str]:
    return [d for d in TEST_DIRS if (assignment.tests if d == "tests" else assignment.public_tests)]


def relay(assignment: Assignment, files: dict[str, bytes], ctx: GradeContext, n_tests: int,
          template: tuple[str, str] | None = None) -> RelayRun:
    """The student's sandbox and the test sandbox, on one CPU where the
    backend pins them (their calls go back and forth: backends/cpus.py)."""
    with ctx.backend.paired_cpu() as cpu:
        return _relay(assignment, files, ctx, n_tests, template, cpu)


def _relay(assignment: Assignment, files: dict[str, bytes], ctx: GradeContext, n_tests: int,
           template: tuple[str, str] | None, cpu: int | None) -> RelayRun:
    cfg = assignment.config
    budget = _budget(assignment, ctx, n_tests)
    student_limits = ctx.limits.model_copy(update={"wall_s": budget})
    student = StudentRunner(ctx.backend, files, student_limits, module=cfg.module, entry=cfg.entry,
                            label=ctx.label, submission_id=ctx.submission_id, after_reply=ctx.after_reply,
                            prelude=assignment.prelude_name, sample=assignment.explains("time_limit"), cpu=cpu)
    load_timeout = cfg.test_timeout_s + ctx.slack_s()

    def load() -> dict[str, Any]:
        # The import runs the student's code: on the submission's clock (its
        # sandbox's start is not).
        started = time.monotonic()
        try:
            return student.restart(ctx.left_s(load_timeout))
        except RequestTimeout as exc:
            return {"ok": False, "timeout": True, "sample": exc.sample}
        except RunnerDied as exc:
            return {"ok": False, "died": True, "verdict": exc.verdict}
        finally:
            ctx.charge(time.monotonic() - started - student.last_start_s)

    run = RelayRun(load=load())
    if not run.load.get("ok"):
        student.close()
        return run
    names = run.load.get("names") or {}
    # pytest needs more room than the student's code may get; the operator's defaults do.
    test_limits = ctx.settings.limits_for(ctx.settings.default_limits).model_copy(update={"wall_s": budget})
    peer = student.peer_fds() if ctx.backend.peer_channels else None
    job = SandboxJob(argv=["python3", "-I", f"{RUNNER_DIR}/pytest_side/launch.py", *_dirs(assignment)],
                     files=_test_files(assignment), limits=test_limits, channel=True, label=ctx.label, peer=peer,
                     template=template[0] if template else None, cpu=cpu,
                     env={TEMPLATE_ENV: template[1]} if template else {})
    try:
        while True:
            try:
                box = ctx.backend.start(job)
            except SandboxError as exc:
                raise InfraError(f"test sandbox did not start: {exc}") from exc
            try:
                box.channel.send({"op": "hello", "module": cfg.module, "names": names, "peer": peer is not None,
                                  "test_timeout_s": cfg.test_timeout_s, "first_id": student.next_id(),
                                  # The calls it makes over the peer channel are on the clock too.
                                  "wall_s": ctx.clock.remaining() if ctx.clock is not None else None,
                                  # What the relay asks of the runner, for the calls the test sandbox makes.
                                  "explain": {"sample": assignment.explains("time_limit"),
                                              "watch": assignment.explains("mutated_argument")}})
                _serve(box, student, run, assignment, ctx, budget, load, quiet=peer is not None)
            finally:
                box.kill()
                run.test_box = box.wait(timeout=2.0)
            if not run.refused:
                break
            # The collected session does not fit this submission's names: a plain test run.
            run.refused = False
            job = job.model_copy(update={"template": None, "env": {}})
    finally:
        student.close()
    if run.test_box.verdict is Verdict.sandbox_error:
        raise InfraError(f"test sandbox failed: {run.test_box.error}")
    return run


def _serve(box: RunningSandbox, student: StudentRunner, run: RelayRun, assignment: Assignment,
           ctx: GradeContext, budget: float, load: Any, quiet: bool = False) -> None:
    """Answers the test sandbox until it is done, gone or out of time.
    `quiet`: it calls the runner itself (peer channel), so until it says
    `lost` its messages are read in batches, at most every QUIET_POLL_S."""
    deadline = time.monotonic() + budget
    per_test = assignment.config.test_timeout_s
    current: str | None = None
    spent = 0.0
    student_ok = True
    woke = 0.0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if quiet and not box.channel.pending():
            gap = min(woke + QUIET_POLL_S - time.monotonic(), left)
            if gap > 0:
                time.sleep(gap)
            woke = time.monotonic()
            left = deadline - woke
        try:
            msg = box.channel.recv(left)
        except TimeoutError:
            return
        except ChannelError:
            return
        if not isinstance(msg, dict):
            continue
        op = msg.get("op")
        if op == "template_refused" and not run.collected:  # its first word, or never
            run.refused = True
            return
        if op == "collected" and not run.collected:
            run.collected = [str(t) for t in msg.get("tests") or []]
        elif op == "start":
            current, spent = str(msg.get("nodeid")), 0.0
        elif op == "result":
            nodeid = str(msg.get("nodeid"))
            run.results[nodeid] = msg
            if "trace" in msg:  # its calls went over the peer channel: the evidence the relay would note
                _absorb(run.traces.setdefault(nodeid, Trace()), msg.pop("trace"))
        elif op == "done":
            run.finished = True
            return
        elif op in RELAYED_OPS or op == "lost":
            quiet = False   # the host relays from here on: every request answered at once
            began = time.monotonic()
            if op == "lost":  # the test sandbox gave up on the runner it talked to itself
                current = str(msg.get("nodeid") or current or "") or None
                said = msg.get("spent")
                spent = min(max(float(said), 0.0), per_test) if _is_number(said) else 0.0
                wall_left = msg.get("wall_left")   # what the peer's calls left of the clock
                if ctx.clock is not None and _is_number(wall_left):
                    ctx.charge(ctx.clock.remaining() - float(wall_left))
            request = {k: msg[k] for k in RELAYED_KEYS if k in msg}
            timeout = ctx.left_s(max(per_test - spent, 0.05))
            if assignment.explains("time_limit"):
                request["sample_after"] = sample_after(timeout)
            if assignment.explains("mutated_argument") and request.get("op") == "call":
                request["watch"] = True
            trace = run.traces.setdefault(current, Trace()) if current else Trace()
            if op != "lost":
                trace.note_call(request)
            try:
                if ctx.out_of_time() and op != "lost":
                    raise OutOfTime   # the submission's running time is spent: the call is not made
                if not student_ok:
                    raise RunnerDied(None)
                if op == "lost":
                    sample = _absorb(trace, msg.get("trace"))
                    student.lost(str(msg.get("why")), sample)
                called = time.monotonic()
                try:
                    reply = student.request(request, timeout)
                finally:
                    ctx.charge(time.monotonic() - called)
                trace.note_reply(reply, op)
            except OutOfTime:
                reply = {"ok": False, "timeout": True, "out_of_time": True}
                if current:
                    run.host.setdefault(current, ("timeout", Verdict.wall_time))
            except RequestTimeout as exc:
                reply = {"ok": False, "timeout": True}
                trace.sample = exc.sample
                if current:
                    run.host[current] = ("timeout", Verdict.wall_time)
                student_ok = not ctx.out_of_time() and load().get("ok", False)
            except RunnerDied as exc:
                reply = {"ok": False, "died": True,
                         "verdict": exc.verdict.value if exc.verdict else None}
                if current:
                    run.host.setdefault(current, ("died", exc.verdict))
                student_ok = student_ok and not ctx.out_of_time() and load().get("ok", False)
            spent += time.monotonic() - began
            try:
                box.channel.send({**reply, "id": msg.get("id")})
            except ChannelError:
                return


def _absorb(trace: Trace, data: Any) -> list[list[Any]] | None:
    """Note in `trace` what the test sandbox saw of the calls it made over
    the peer channel (xgrader_proxy.Trace), as the relay notes its own; the
    runner's replies in it are untrusted as ever. Returns the stack sample
    of a call that ran over, if one came."""
    if not isinstance(data, dict):
        return None
    calls = data.get("calls")
    for call in calls[:51] if isinstance(calls, list) else ():
        if isinstance(call, list) and len(call) == 2:
            trace.note_call({"op": "call", "target": call[0], "method": call[1]})
    if isinstance(data.get("reply"), dict):
        trace.note_reply(clean_reply(data["reply"]), "call")
    if isinstance(data.get("error"), dict):
        trace.error = clean_reply({"error": data["error"]})["error"]
    output = data.get("output")
    if isinstance(output, list):
        trace.output = [clean_text(t, 20_000) for t in output[:200] if isinstance(t, str)]
    trace.mutated = trace.mutated or data.get("mutated") is True
    sample = clean_sample(data.get("sample"))
    if sample is not None:
        trace.sample = sample
    return sample


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


# -- reference -----------------------------------------------------------------

def compute_reference(assignment: Assignment, ctx: GradeContext) -> dict[str, Any]:
    files = assignment.sandbox_files(assignment.solution)
    n_guess = max(20, sum(data.count(b"def test_") for data in assignment.tests.values()) * 5)
    run = relay(assignment, files, ctx, n_guess)
    if not run.load.get("ok"):
        raise reference_error(f"{assignment.root / 'solution'}: the reference solution does not load", run.load)
    if not run.collected:
        tail = clean_text(run.test_box.stdout if run.test_box else "", 4000)[-1500:]
        raise AssignmentError(f"{assignment.root / 'tests'}: pytest collected no tests ({tail.strip()})")
    failing = [t for t in run.collected if (run.results.get(t) or {}).get("outcome") not in ("passed", "skipped")]
    if failing:
        log.warning("reference_solution_fails_tests", assignment=assignment.name, tests=failing[:10])
    # Why, for `xgrader check` (the reference's own run: nothing here is a student's).
    why = {t: _failure(run.results.get(t), run.host.get(t)) for t in failing[:20]}
    names = run.load.get("names")
    return {"tests": run.collected, "failing": failing, "failing_why": why, "names": names,
            # Per version, not per submission: the collected session's key, and
            # each test's weight, visibility and name in the report.
            "template": template_of(assignment, ctx, names), "rows": _rows(assignment, run.collected)}


def _failure(result: dict[str, Any] | None, host: tuple[str, Verdict | None] | None) -> str:
    if host is not None:
        return "timed out" if host[0] == "timeout" else f"the process ended ({host[1].value if host[1] else 'killed'})"
    if result is None:
        return "did not report (the test run stopped early)"
    text = clean_text(str(result.get("message") or result.get("outcome") or "failed"), 300)
    return text + where({"traceback": result.get("traceback")})


# -- grading -------------------------------------------------------------------

def _rows(assignment: Assignment, canonical: list[str]) -> list[list[Any]]:
    """[node id, weight, visible, name in the report] of each test."""
    rows: list[list[Any]] = []
    counters: dict[str, int] = {}
    for nodeid in canonical:
        weight, visible = assignment.rule_for(nodeid, public=nodeid.startswith("public_tests/"))
        rows.append([nodeid, weight, visible, _display_name(nodeid, visible, counters)])
    return rows


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


def _literal(text: Any) -> tuple[bool, Any]:
    """A value from pytest's repr of one side of a comparison: a Python
    literal (bounded), or the number of `pytest.approx(x)` (`32.0 ± 3.2e-05`)."""
    if not isinstance(text, str) or len(text) > 4000:
        return False, None
    try:
        return True, ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    m = re.fullmatch(r"(-?[\d.]+(?:e[+-]?\d+)?) ± \S+", text.strip())
    return (True, float(m.group(1))) if m else (False, None)


def _evidence(assignment: Assignment, nodeid: str, visible: bool, result: dict[str, Any],
              trace: Trace | None, status: TestStatus) -> Evidence:
    trace = trace or Trace()
    actual_text, expected_text = result.get("actual"), result.get("expected")
    last: tuple[bool, Any] = (False, None)
    if trace.reply is not None and trace.reply.get("ok"):
        try:
            last = (True, decode(trace.reply.get("value")))
        except BadValue:
            pass
    ok_e, expected = _literal(expected_text)
    ok_a, actual = _literal(actual_text)
    returned_by = None
    if last[0] and (actual_text is None or repr(last[1]) == actual_text or not ok_a):
        ok_a, actual = last
        returned_by = trace.target   # the compared value is what that call returned
    has_values = status is TestStatus.failed and ok_a and ok_e and expected_text is not None
    secrets: list[str] = []
    if not visible and status is not TestStatus.passed:   # what explanations must not quote (none for a pass)
        atoms = set(assignment.hidden_literals)
        atoms |= explain.atoms_of_text(nodeid.partition("[")[2].replace("-", " "))
        for text in (result.get("input"), actual_text, expected_text):
            if isinstance(text, str):
                atoms |= explain.atoms_of_text(text)
        secrets = sorted(a for a in atoms if a[:1].isdigit() or a[:1] == "-" or a.lower() not in assignment.public_words)
    return Evidence(
        input=result.get("input"), expected=expected_text, actual=actual_text,
        expected_value=expected if has_values else None, actual_value=actual if has_values else None,
        has_values=has_values, check="value", function=returned_by, called=list(trace.targets),
        message=clean_text(str(result.get("message")), 500) if result.get("message") else None,
        output="".join(trace.output), error=trace.error if status is TestStatus.error else None,
        sample=trace.sample, timeout_s=assignment.config.test_timeout_s, mutated=trace.mutated,
        secrets=secrets,
    )


def grade_pytest(assignment: Assignment, files: dict[str, bytes], ctx: GradeContext) -> GradeReport:
    reference = ctx.store.get(assignment, lambda: compute_reference(assignment, ctx))
    canonical: list[str] = reference["tests"]
    cfg = assignment.config
    limit = cfg.feedback.max_chars
    template = reference.get("template")
    run = relay(assignment, assignment.sandbox_files(files), ctx, len(canonical),
                (template[0], template[1]) if template else None)
    findings = scoring.Findings()
    load = run.load
    placeholders = [tuple(row) for row in reference.get("rows") or _rows(assignment, canonical)]
    loaded = bool(load.get("ok"))
    if not loaded:
        early = scoring.load_failure(assignment, load, findings, ctx.source, lambda err: scoring.syntax_report(
            assignment, err, [TestReport(name=n, status=TestStatus.not_run, weight=w, visible=v, test_id=i)
                              for i, w, v, n in placeholders], ctx.source))
        if early is not None:
            return early
    else:
        findings.missing = scoring.missing_required(assignment, load.get("names"))

    tests: list[TestReport] = []
    for nodeid, weight, visible, name in placeholders:
        result = run.results.get(nodeid)
        if result is not None and result.get("outcome") == "skipped":
            continue
        host = run.host.get(nodeid)
        status = _status(result, host)
        if not loaded and status is not TestStatus.passed:
            status = TestStatus.not_run   # the module did not load: the test could not run
        if status is TestStatus.timeout:   # the relay's timeout, or one the test sandbox saw on its peer channel
            findings.limits.add(scoring.Outcome.time_limit)
        elif host is not None:
            if findings.note_limit(host[1]) is None and status is not TestStatus.passed:
                findings.runtime_error = True
                if scoring.STOPPED not in findings.explanations:
                    findings.explanations.append(scoring.STOPPED)
        result = result or {}
        if result.get("missing") and status is not TestStatus.passed:
            # The test needs a name the submission does not define: it could not run.
            status = TestStatus.not_run
            absent = re.match(r"your code does not define (\w+)", str(result.get("message") or ""))
            if absent and absent.group(1) not in findings.missing:
                findings.missing.append(absent.group(1))
        etype = result.get("exception_type")
        etype = clean_text(str(etype), 100) if etype else None
        if status is TestStatus.error and etype:
            findings.runtime_error = True
        evidence = _evidence(assignment, nodeid, visible, result, run.traces.get(nodeid), status)
        if status is TestStatus.error and evidence.error is None and result.get("traceback") is not None and etype:
            # The test sandbox saw a student exception the relay did not keep (a handle's method...).
            evidence = evidence.model_copy(update={"error": {
                "type": etype, "message": clean_text(str(result.get("message") or ""), 2000).removeprefix(f"{etype}: "),
                "traceback": clean_text(str(result.get("traceback") or ""), 4000), "frames": None}})
        if not visible:
            tests.append(TestReport(name=name, status=status, weight=weight, visible=False, exception_type=etype,
                                    test_id=nodeid, evidence=evidence))
            continue
        message = result.get("message")
        if status is TestStatus.timeout and result.get("out_of_time"):
            message = (f"Not run: your code had used up its running time ({ctx.limits.wall_s:g} s "
                       "across all tests).")
        elif status is TestStatus.timeout:
            message = f"Took longer than {cfg.test_timeout_s:g} s."
        elif status is TestStatus.missing:
            message = "This test did not report a result (the test run stopped early)."
        elif status is TestStatus.not_run and not result.get("missing"):
            message = "Not run: your code did not load (see above)."
        output = result.get("output") if cfg.feedback.show_output else None

        def text(v: Any) -> str | None:
            return scoring.cap(clean_text(str(v), limit * 2), limit) if v not in (None, "") else None

        tests.append(TestReport(
            name=name, status=status, weight=weight, visible=True,
            input=text(result.get("input")), expected=text(result.get("expected")),
            actual=text(result.get("actual")), message=text(message), output=text(output),
            exception_type=etype, test_id=nodeid, evidence=evidence,
        ))
    if not tests:
        raise AssignmentError(f"{assignment.root / 'tests'}: every test was skipped")
    return scoring.build(assignment, tests, findings, ctx.source)
