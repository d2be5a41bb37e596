"""The "mutation" kind: the student submits pytest tests; they must pass on
the reference implementation and fail on deliberately broken versions
(mutants). Score: the weight of the mutants caught over the total.

Every run (the reference, or one mutant) uses two fresh sandboxes:

- a test sandbox runs pytest on the student's files (their tests are
  untrusted code), with the implementation's module replaced by the proxy of
  the pytest kind (sandbox/pytest_side): each call goes to the host;
- an implementation sandbox runs the runner with the reference or a mutant
  loaded, under the same file name and module name; the host relays calls
  to it, refusing introspection (names starting with `_`, frames, code,
  modules) and scrubbing what could tell two implementations apart other
  than their behaviour (tracebacks with source lines, object addresses).

What the test sandbox gets is the same for every run, byte for byte (the
same job: files, argv, environment, limits; the same hello with the
reference's top-level names): the student's tests can observe the
implementation only through the values, output and exceptions of calls.
The runs go in a random order, the reference more than once
(`reference_runs`), so neither the order nor a suite that fails at random
earns anything. Each run is bounded in time and never retried.
"""

from __future__ import annotations

import concurrent.futures
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from xgrader.assignment import Assignment
from xgrader.errors import AssignmentError, InfraError
from xgrader.handlers import scoring
from xgrader.handlers.context import GradeContext
from xgrader.handlers.student import RequestTimeout, RunnerDied, StudentRunner
from xgrader.kind_config import Mutant
from xgrader.report import Explanation, GradeReport, Outcome, TestReport, TestStatus
from xgrader.backends.base import (
    RUNNER_DIR, ChannelError, RunningSandbox, SandboxError, SandboxJob, SandboxResult, Verdict, clean_text,
)

log = structlog.get_logger(__name__)

STARTUP_S = 5.0           # pytest start-up and collection in the test sandbox
TEST_SLACK_S = 1.0        # one test's own code (not its calls) may take this beyond test_timeout_s
RELAYED_OPS = {"call", "getattr", "special"}
RELAYED_KEYS = ("op", "target", "method", "name", "args", "kwargs")
SPECIALS = {"str", "repr", "len", "bool", "list", "getitem", "contains"}
# Attributes that reach code, frames or globals without a leading underscore.
INTROSPECTION = re.compile(r"^(gi|cr|ag|f|tb|co)_")
# Handle types that would let a test read or run the implementation's code.
REFUSED_TYPES = {"module", "code", "frame", "traceback", "cell", "function_or_method", "mappingproxy"}
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
REFERENCE = ""            # the implementation name of the reference in a run
SHOWN_FAILURES = 5


@dataclass
class SuiteRun:
    """One run of the student's suite against one implementation."""

    impl: str                               # REFERENCE or a mutant's name
    collected: list[str] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls_timed_out: set[str] = field(default_factory=set)
    tests_timed_out: set[str] = field(default_factory=set)   # the test's own code ran too long
    finished: bool = False
    test_box: SandboxResult | None = None

    def failing(self, expected: list[str]) -> list[str]:
        """Tests of `expected` (the reference run's collection) that did not pass here."""
        out = []
        for nodeid in expected:
            outcome = (self.results.get(nodeid) or {}).get("outcome")
            if nodeid in self.calls_timed_out or nodeid in self.tests_timed_out or \
                    outcome not in ("passed", "skipped"):
                out.append(nodeid)
        return out


# -- the relay's policy ---------------------------------------------------------

def refusal(msg: dict[str, Any], names: dict[str, str]) -> str | None:
    """Why a request from the test sandbox must not reach the implementation
    (None: relay it). Tests may call the module's functions and classes, read
    its plain values, and use the objects calls return; nothing else."""
    op = msg.get("op")
    target = msg.get("target")
    if isinstance(target, str):
        parts = target.split(".") if target else []
        if any(not p or p.startswith("_") or INTROSPECTION.match(p) for p in parts):
            return f"{target} is not part of the module's interface"
        # The proxy names only the module's functions and classes, and class
        # attributes (`Box.make`); a plain value is reached by getattr alone.
        kind = names.get(parts[0]) if parts else None
        if parts and kind not in ("function", "class") or (len(parts) > 1 and kind != "class"):
            return f"{target} is not a function or class of the module"
        if op in ("call", "special") and not parts:
            return "the module itself cannot be called"
    elif target is not None and not (isinstance(target, dict) and isinstance(target.get("$handle"), int)):
        return "bad target"
    for key in ("method", "name"):
        value = msg.get(key)
        if value is None or (op == "special" and key == "name"):
            continue
        if not isinstance(value, str) or value.startswith("_") or INTROSPECTION.match(value):
            return f"{value} is not part of the module's interface"
        if op == "getattr" and target in (None, "") and names.get(value) != "value":
            return f"the module has no value {value}"
    if op == "special" and msg.get("name") not in SPECIALS:
        return "unsupported operation"
    return None


def scrub(reply: dict[str, Any]) -> dict[str, Any]:
    """What the test sandbox gets back: values, output and the exception's
    type and message; never a traceback (it quotes the implementation's
    source lines), object addresses, or a handle on code or modules."""
    out = {k: reply[k] for k in ("ok", "value", "stdout", "stderr", "timeout", "died", "verdict") if k in reply}
    err = reply.get("error")
    if isinstance(err, dict):
        out["error"] = {"type": err.get("type"), "builtin": err.get("builtin"),
                        "message": ADDRESS.sub("", str(err.get("message") or "")), "traceback": ""}
    if "value" in out:
        try:
            out["value"] = _scrub_value(out["value"], 0)
        except ValueError as exc:
            return {"ok": False, "error": {"type": "TypeError", "builtin": True, "message": str(exc),
                                           "traceback": ""}}
    return out


def _scrub_value(v: Any, depth: int) -> Any:
    if depth > 80:
        raise ValueError("value nested too deeply")
    if isinstance(v, list):
        return [_scrub_value(x, depth + 1) for x in v]
    if not isinstance(v, dict):
        return v
    if "$handle" in v:
        kind = str(v.get("type") or "")
        if kind in REFUSED_TYPES or kind.endswith("_descriptor"):
            raise ValueError(f"a {kind} object cannot be used from the tests")
        return {"$handle": v["$handle"], "type": kind, "repr": ADDRESS.sub("", str(v.get("repr") or "")),
                "callable": bool(v.get("callable"))}
    return {k: _scrub_value(x, depth + 1) for k, x in v.items()}


# -- one run ------------------------------------------------------------------------

def _module_file(assignment: Assignment) -> str:
    return f"{assignment.config.module}.py"


def implementation_files(assignment: Assignment, mutant: Mutant | None) -> dict[str, bytes]:
    """The reference's files, or the same set with the mutant's replacements:
    every implementation under the same names."""
    files = {**assignment.files, **assignment.solution}
    if mutant is not None:
        files.update(mutant.files)
    return files


def test_job(assignment: Assignment, files: dict[str, bytes], ctx: GradeContext) -> SandboxJob:
    """The test sandbox's job: the same for every run of a submission."""
    budget = _budget(assignment, ctx)
    limits = ctx.limits.model_copy(update={"wall_s": budget})
    return SandboxJob(argv=["python3", "-I", f"{RUNNER_DIR}/pytest_side/launch.py", "."],
                      files={**assignment.files, **files}, limits=limits, channel=True, label=ctx.label)


def _budget(assignment: Assignment, ctx: GradeContext) -> float:
    return min(ctx.limits.wall_s + STARTUP_S, ctx.settings.limit_ceilings.wall_s + STARTUP_S,
               ctx.settings.job_timeout_s * 0.5)


def run_suite(assignment: Assignment, job: SandboxJob, impl: str, impl_files: dict[str, bytes],
              names: dict[str, str], ctx: GradeContext) -> SuiteRun:
    cfg = assignment.config
    budget = job.limits.wall_s
    runner = StudentRunner(ctx.backend, impl_files, ctx.limits.model_copy(update={"wall_s": budget}),
                           module=cfg.module, entry=_module_file(assignment), label=ctx.label,
                           submission_id=ctx.submission_id, after_reply=ctx.after_reply)
    load_timeout = cfg.test_timeout_s + ctx.slack_s()
    run = SuiteRun(impl=impl)

    def load() -> bool:
        try:
            return bool(runner.restart(load_timeout).get("ok"))
        except (RequestTimeout, RunnerDied):
            return False

    if not load():
        runner.close()
        raise InfraError(f"the {'reference' if impl == REFERENCE else 'mutant ' + impl} implementation "
                         "did not load")
    try:
        box = ctx.backend.start(job)
    except SandboxError as exc:
        runner.close()
        raise InfraError(f"test sandbox did not start: {exc}") from exc
    try:
        box.channel.send({"op": "hello", "module": cfg.module, "names": names})
        _serve(box, runner, run, names, cfg.test_timeout_s, budget, load)
    except ChannelError:
        pass
    finally:
        if run.finished and not run.collected:
            # pytest's own report (a collection error) is flushed as it exits.
            run.test_box = box.wait(timeout=time.monotonic() - box.started + 2.0)
        box.kill()
        run.test_box = run.test_box or box.wait(timeout=2.0)
        runner.close()
    if run.test_box.verdict is Verdict.sandbox_error:
        raise InfraError(f"test sandbox failed: {run.test_box.error}")
    return run


def _serve(box: RunningSandbox, runner: StudentRunner, run: SuiteRun, names: dict[str, str],
           per_test: float, budget: float, load: Any) -> None:
    deadline = time.monotonic() + budget
    current: str | None = None
    test_deadline = deadline
    spent = 0.0
    alive = True
    while True:
        left = min(deadline, test_deadline) - time.monotonic()
        if left <= 0:
            if current and test_deadline < deadline:  # one test ran too long: the run ends there
                run.tests_timed_out.add(current)
            return
        try:
            msg = box.channel.recv(left)
        except TimeoutError:
            continue
        except ChannelError:
            return
        if not isinstance(msg, dict):
            continue
        op = msg.get("op")
        if op == "collected" and not run.collected:
            run.collected = [clean_text(str(t), 500) for t in (msg.get("tests") or [])][:5000]
        elif op == "start":
            current, spent = clean_text(str(msg.get("nodeid")), 500), 0.0
            test_deadline = time.monotonic() + per_test + TEST_SLACK_S
        elif op == "result":
            run.results[clean_text(str(msg.get("nodeid")), 500)] = msg
            current, test_deadline = None, deadline
        elif op == "done":
            run.finished = True
            return
        elif op in RELAYED_OPS:
            why = refusal(msg, names)
            began = time.monotonic()
            if why is not None:
                reply: dict[str, Any] = {"ok": False, "error": {"type": "AttributeError", "builtin": True,
                                                                "message": why, "traceback": ""}}
            else:
                try:
                    if not alive:
                        raise RunnerDied(None)
                    reply = scrub(runner.request({k: msg[k] for k in RELAYED_KEYS if k in msg},
                                                 max(per_test - spent, 0.05)))
                except RequestTimeout:
                    reply = {"ok": False, "timeout": True}
                    if current:
                        run.calls_timed_out.add(current)
                    alive = load()
                except RunnerDied as exc:
                    reply = {"ok": False, "died": True, "verdict": exc.verdict.value if exc.verdict else None}
                    alive = alive and load()
            spent += time.monotonic() - began
            box.channel.send({**reply, "id": msg.get("id")})


# -- reference ------------------------------------------------------------------------

def compute_reference(assignment: Assignment, ctx: GradeContext) -> dict[str, Any]:
    """The reference's top-level names (the hello every run sends), and a
    check that the reference and every mutant load."""
    cfg = assignment.config
    names: dict[str, str] = {}
    for mutant in [None, *assignment.mutants]:
        runner = StudentRunner(ctx.backend, implementation_files(assignment, mutant), ctx.limits,
                               module=cfg.module, entry=_module_file(assignment), label=ctx.label)
        where = assignment.root / ("solution" if mutant is None else f"mutants/{mutant.name}")
        try:
            reply = runner.start(cfg.test_timeout_s + ctx.slack_s())
        except (RequestTimeout, RunnerDied):
            raise AssignmentError(f"{where}: the implementation does not load (time or resource limit)") from None
        finally:
            runner.close()
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise AssignmentError(f"{where}: the implementation does not load ({err.get('type')}: "
                                  f"{str(err.get('message'))[:200]})")
        if mutant is None:
            names = {str(k): str(v) for k, v in (reply.get("names") or {}).items()}
    return {"names": names}


# -- grading --------------------------------------------------------------------------

def _plan(assignment: Assignment) -> list[Mutant | None]:
    """Every run of a submission, in a random order: the mutants and the
    reference `reference_runs` times."""
    plan: list[Mutant | None] = [*assignment.mutants, *([None] * assignment.config.mutation.reference_runs)]
    random.SystemRandom().shuffle(plan)
    return plan


def run_all(assignment: Assignment, files: dict[str, bytes], ctx: GradeContext,
            names: dict[str, str]) -> tuple[list[SuiteRun], dict[str, SuiteRun]]:
    """(the reference runs, the mutant runs by name)."""
    job = test_job(assignment, files, ctx)
    plan = _plan(assignment)

    def one(mutant: Mutant | None) -> SuiteRun:
        impl = REFERENCE if mutant is None else mutant.name
        return run_suite(assignment, job, impl, implementation_files(assignment, mutant), names, ctx)

    workers = max(1, min(assignment.config.mutation.parallel, len(plan)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        runs = list(pool.map(one, plan))
    references = [r for r in runs if r.impl == REFERENCE]
    return references, {r.impl: r for r in runs if r.impl != REFERENCE}


def _display(assignment: Assignment) -> list[tuple[Mutant, str]]:
    out = []
    hidden = 0
    for i, m in enumerate(assignment.mutants, 1):
        if m.visible:
            out.append((m, f"Bug {i}: {m.description}" if m.description else f"Bug {i}"))
        else:
            hidden += 1
            out.append((m, f"hidden bug #{hidden}"))
    return out


def _report(assignment: Assignment, outcome: Outcome, score: float, tests: list[TestReport],
            explanations: list[Explanation]) -> GradeReport:
    return GradeReport(assignment=assignment.name, title=assignment.title, outcome=outcome, score=score,
                       max_score=assignment.max_points, tests=tests, explanations=explanations)


def _collection_problem(run: SuiteRun) -> str:
    """The tail of pytest's own output: collection errors (the student's files)."""
    text = clean_text(run.test_box.stdout if run.test_box else "", 20_000)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("E ", "ERROR"))]
    return "\n".join(errors[:20] or lines[-25:])[-2000:]


def _reference_failure(assignment: Assignment, run: SuiteRun, canonical: list[str]) -> GradeReport:
    limit = assignment.config.feedback.max_chars
    failing = run.failing(canonical)
    tests = []
    for nodeid in failing[:SHOWN_FAILURES]:
        result = run.results.get(nodeid) or {}
        if nodeid in run.calls_timed_out:
            status, message = TestStatus.timeout, (f"A call into the implementation took longer than "
                                                   f"{assignment.config.test_timeout_s:g} s.")
        elif nodeid in run.tests_timed_out:
            status, message = TestStatus.timeout, (f"This test ran longer than "
                                                   f"{assignment.config.test_timeout_s + TEST_SLACK_S:g} s.")
        elif not result:
            status, message = TestStatus.missing, "This test did not report a result (the test run stopped early)."
        else:
            status = TestStatus.error if result.get("outcome") == "error" else TestStatus.failed
            message = clean_text(str(result.get("message") or result.get("outcome") or "failed"), limit * 2)
        tests.append(TestReport(name=clean_text(nodeid, 300), status=status, weight=0, visible=True,
                                message=scoring.cap(message, limit),
                                input=scoring.cap(clean_text(str(result.get("input") or ""), limit), limit) or None))
    more = len(failing) - len(tests)
    detail = ("A test that fails on a correct implementation cannot tell a bug from a correct program: "
              "fix or remove it. No points are given until every test passes on the correct implementation.")
    if more > 0:
        detail += f" ({more} more failing tests not shown.)"
    if not run.finished and not failing:
        detail = ("Your test run did not finish on the correct implementation (it crashed, exited, or ran "
                  "out of time). " + detail)
    outcome = Outcome.time_limit if any(t.status is TestStatus.timeout for t in tests) else Outcome.failed
    return _report(assignment, outcome, 0.0, tests,
                   [Explanation(title="Your tests fail on a correct implementation", detail=detail)])


def grade_mutation(assignment: Assignment, files: dict[str, bytes], ctx: GradeContext) -> GradeReport:
    cfg = assignment.config
    reference = ctx.store.get(assignment, lambda: compute_reference(assignment, ctx))
    names: dict[str, str] = reference["names"]
    files = {k: v for k, v in files.items() if k != _module_file(assignment)}  # the proxy is that module
    references, mutant_runs = run_all(assignment, files, ctx, names)
    first = references[0]
    canonical = first.collected
    for run in references:
        if not run.collected:
            return _report(assignment, Outcome.failed, 0.0, [], [Explanation(
                title="No tests found",
                detail=f"pytest found no test in your submission (test functions are named test_*, in "
                       f"files named test_*.py). The main test file is {cfg.entry}.",
                traceback=_collection_problem(run) or None)])
        if run.collected != canonical:
            return _report(assignment, Outcome.failed, 0.0, [], [Explanation(
                title="Your tests are not the same from one run to the next",
                detail="pytest collected different tests in two runs on the same correct implementation. "
                       "Collect a fixed set of tests (no random or time-dependent parametrisation).")])
        if run.failing(canonical) or not run.finished:
            return _reference_failure(assignment, run, canonical)
    n_tests = sum(1 for t in canonical if (first.results.get(t) or {}).get("outcome") == "passed")
    if n_tests < cfg.mutation.min_tests:
        return _report(assignment, Outcome.failed, 0.0, [], [Explanation(
            title="Not enough tests",
            detail=f"Your suite has {n_tests} test{'s' if n_tests != 1 else ''} that ran; at least "
                   f"{cfg.mutation.min_tests} are needed for any points.")])
    tests: list[TestReport] = []
    caught = 0
    for mutant, label in _display(assignment):
        run = mutant_runs[mutant.name]
        is_caught = not run.finished or bool(run.failing(canonical))
        caught += is_caught
        status = TestStatus.passed if is_caught else TestStatus.failed
        if mutant.visible:
            message = None if is_caught else "No test of yours failed on a version with this bug."
            tests.append(TestReport(name=label, status=status, weight=mutant.weight, visible=True, message=message))
        else:
            tests.append(TestReport(name=label, status=status, weight=mutant.weight, visible=False))
    total = len(assignment.mutants)
    summary = Explanation(
        title=f"Your tests caught {caught} of {total} bugs; {total - caught} survived",
        detail=(f"Your {n_tests} tests pass on the correct implementation. Each bug is a version of the "
                "implementation with one deliberate mistake: a bug is caught when at least one of your tests "
                "fails on it." + ("" if caught == total else
                                  " Write tests for the behaviour the surviving bugs change.")))
    report = scoring.build(assignment, tests, scoring.Findings())
    return report.model_copy(update={"explanations": [summary, *report.explanations]})
