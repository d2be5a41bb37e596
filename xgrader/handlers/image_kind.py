"""The "image" kind: the student's code writes an image file; the host
compares it with the reference's image, pixel by pixel with a tolerance.

Each case runs in a fresh student sandbox: an expression case loads the
module and evaluates `expr`; a program case runs the entry file as
`__main__` with `stdin`. Then the runner reads the output file back
(`read_file`: O_NOFOLLOW, a regular file, at most `max_bytes`, removed after
reading) and the host decodes it with Pillow under the assignment's limits
(image_compare.py). Expected images are the reference solution's output,
computed once per assignment version (ExpectedStore), or an image file under
tests/ named by the case's `expected`.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass, field
from typing import Any

from xgrader.assignment import Assignment
from xgrader.backends.base import Verdict
from xgrader.errors import AssignmentError
from xgrader.handlers import scoring
from xgrader.handlers.context import GradeContext
from xgrader.handlers.image_compare import (
    BadImage,
    Comparison,
    compare,
    decode,
    diff_data_uri,
    size_mismatch,
    size_text,
    to_png,
)
from xgrader.handlers.io_kind import SYNTAX_TYPES
from xgrader.handlers.student import RequestTimeout, RunnerDied, StudentRunner
from xgrader.kind_config import ImageCase
from xgrader.report import Explanation, GradeReport, TestReport, TestStatus

READ_TIMEOUT_S = 5.0


@dataclass
class ImageRun:
    """One case's raw outcome in a sandbox."""

    status: str                        # ok | error | timeout | died | syntax
    error: dict[str, Any] = field(default_factory=dict)
    stdout: str = ""
    verdict: Verdict | None = None
    data: bytes | None = None          # the file's bytes (ok, found)
    problem: str | None = None         # the file is missing or was refused: why
    names: dict[str, Any] | None = None  # the module's top-level names (expression cases)


def _output(assignment: Assignment, case: ImageCase) -> str:
    return case.output or assignment.config.image.output


def _timeout(assignment: Assignment, case: ImageCase) -> float:
    return case.timeout_s or assignment.config.test_timeout_s


def run_case(assignment: Assignment, files: dict[str, bytes], ctx: GradeContext, case: ImageCase) -> ImageRun:
    cfg = assignment.config
    runner = StudentRunner(ctx.backend, files, ctx.limits, module=cfg.module, entry=cfg.entry, label=ctx.label,
                           submission_id=ctx.submission_id, after_reply=ctx.after_reply)
    timeout = _timeout(assignment, case)

    if ctx.out_of_time():   # the submission's running time is spent: not started
        return ImageRun("timeout", verdict=Verdict.wall_time)
    started = time.monotonic()
    try:
        try:
            if case.expr is not None:
                reply = runner.start(ctx.left_s(timeout + ctx.slack_s()))
                if reply.get("ok"):
                    reply = runner.request({"op": "eval", "expr": case.expr}, ctx.left_s(timeout))
            else:
                runner.open_box()   # program cases: nothing loaded
                reply = runner.request({"op": "run_main", "path": cfg.entry, "stdin": case.stdin or ""},
                                       ctx.left_s(timeout + ctx.slack_s()))
        except RequestTimeout:
            return ImageRun("timeout", verdict=Verdict.wall_time)
        except RunnerDied as exc:
            return ImageRun("died", verdict=exc.verdict)
        names = runner.load_reply.get("names") if runner.load_reply and runner.load_reply.get("ok") else None
        stdout = str(reply.get("stdout") or "")
        if not reply.get("ok"):
            err = reply.get("error") or {}
            syntax = err.get("type") in SYNTAX_TYPES or (
                err.get("type") == "ValueError" and "null bytes" in str(err.get("message")))
            return ImageRun("syntax" if syntax else "error", error=err, stdout=stdout, names=names)
        opts = cfg.image
        try:
            got = runner.request({"op": "read_file", "path": _output(assignment, case),
                                  "max_bytes": opts.max_bytes, "remove": True}, READ_TIMEOUT_S)
        except (RequestTimeout, RunnerDied) as exc:
            return ImageRun("died", verdict=getattr(exc, "verdict", None), stdout=stdout)
        return ImageRun("ok", stdout=stdout, names=names, **_file_of(got, _output(assignment, case), opts.max_bytes))
    finally:
        ctx.charge(time.monotonic() - started - runner.last_start_s)   # the case's running time
        runner.close()


def _file_of(reply: dict[str, Any], name: str, max_bytes: int) -> dict[str, Any]:
    """The runner's read_file reply (untrusted data) -> data or the problem."""
    if not reply.get("ok") or not reply.get("found"):
        return {"problem": f"Your code did not write {name}."}
    refused = reply.get("refused")
    if refused == "too large":
        return {"problem": f"{name} is larger than the {max_bytes} bytes allowed."}
    if refused:
        return {"problem": f"{name} could not be read: it is {str(refused)[:80]}. Write the image file itself."}
    try:
        data = base64.b64decode(str(reply.get("data") or ""), validate=True)
    except (binascii.Error, ValueError):
        return {"problem": f"{name} could not be read back."}
    if len(data) > max_bytes:
        return {"problem": f"{name} is larger than the {max_bytes} bytes allowed."}
    return {"data": data}


# -- reference --------------------------------------------------------------------

def compute_reference(assignment: Assignment, ctx: GradeContext) -> dict[str, Any]:
    """The reference solution's image for every case without `expected`, as PNG."""
    files = {**assignment.files, **assignment.solution}
    opts = assignment.config.image
    out: dict[str, Any] = {}
    for i, case in enumerate(assignment.image_cases):
        if case.expected is not None:
            continue
        where = f"{assignment.root / 'tests/cases.toml'}: {_name(assignment, i)}"
        run = run_case(assignment, files, ctx, case)
        if run.status != "ok" or run.data is None:
            why = run.problem or (f"{run.error.get('type')}: {str(run.error.get('message'))[:200]}"
                                  if run.error else run.status)
            raise AssignmentError(f"{where}: the reference solution failed ({why})")
        try:
            img = decode(run.data, _output(assignment, case), opts.max_pixels, opts.max_bytes)
        except BadImage as exc:
            raise AssignmentError(f"{where}: the reference solution's image: {exc}") from None
        out[str(i)] = {"png": base64.b64encode(to_png(img)).decode("ascii")}
    return {"cases": out}


def _expected_image(assignment: Assignment, index: int, case: ImageCase, reference: dict[str, Any]) -> Any:
    opts = assignment.config.image
    if case.expected is not None:
        data, name = assignment.tests[case.expected], f"tests/{case.expected}"
    else:
        data, name = base64.b64decode(reference["cases"][str(index)]["png"]), "the reference image"
    try:
        return decode(data, name, opts.max_pixels, opts.max_bytes)
    except BadImage as exc:
        raise AssignmentError(f"{assignment.root / 'tests/cases.toml'}: {_name(assignment, index)}: "
                              f"{exc}") from None


# -- grading ----------------------------------------------------------------------

def _name(assignment: Assignment, index: int) -> str:
    return assignment.image_cases[index].name or f"case {index + 1}"


def _pct(share: float) -> str:
    return f"{share * 100:.2f}".rstrip("0").rstrip(".") + " %"


def _judge(assignment: Assignment, index: int, case: ImageCase, run: ImageRun, expected: Any,
           findings: scoring.Findings) -> TestReport:
    cfg = assignment.config
    opts = cfg.image
    limit = cfg.feedback.max_chars
    threshold = opts.threshold if case.threshold is None else case.threshold
    max_hot = opts.max_hot if case.max_hot is None else case.max_hot
    name = _name(assignment, index)
    output = _output(assignment, case)
    status, message, actual, etype, image = TestStatus.failed, None, None, None, None
    if run.status == "timeout":
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
        etype = str(run.error.get("type") or "Exception")
        status, message = TestStatus.error, f"{etype}: {run.error.get('message') or ''}".strip()
        findings.runtime_error = True
        if not any(e.title.startswith("Your code raised") for e in findings.explanations):
            if case.visible:
                findings.explanations.append(scoring.exception_explanation(
                    run.error, f"in test {name}", cfg.feedback.show_traceback))
            else:
                findings.explanations.append(Explanation(
                    title=f"Your code raised {etype} in a hidden test",
                    detail="Check how your code handles other inputs than the examples."))
    elif run.data is None:
        message = run.problem
    else:
        try:
            img = decode(run.data, output, opts.max_pixels, opts.max_bytes)
        except BadImage as exc:
            message = str(exc)
        else:
            c: Comparison = compare(img, expected, threshold)
            if not c.same_size:
                message = size_mismatch(c)
                actual = f"an image of {size_text(c.actual_size)} pixels"
                if not case.visible and not any(e.title.startswith("Wrong image size") for e in findings.explanations):
                    findings.explanations.append(Explanation(
                        title="Wrong image size in a hidden test",
                        detail="Your image does not have the size the reference image has. "
                               "Check how the size follows from the input."))
            else:
                ok = c.share <= max_hot
                status = TestStatus.passed if ok else TestStatus.failed
                actual = (f"{c.hot} of {c.total} pixels differ by more than {threshold} in some channel: "
                          f"{_pct(c.share)}")
                message = (f"Hot pixels: {_pct(c.share)} (at most {_pct(max_hot)} allowed).")
                if case.visible and not ok and opts.diff_image:
                    image = diff_data_uri(expected, c)
    if not case.visible:
        return TestReport(name=name, status=status, weight=case.weight, visible=False, exception_type=etype)
    shown_input = case.expr if case.expr is not None else f"(your program, with input)\n{case.stdin}"
    exp_w, exp_h = expected.size
    return TestReport(
        name=name, status=status, weight=case.weight, visible=True,
        input=scoring.cap(shown_input, limit),
        expected=f"{output}: {exp_w}×{exp_h} pixels like the reference image, at most "
                 f"{_pct(max_hot)} of them differing by more than {threshold} in some channel",
        actual=scoring.cap(actual, limit), message=scoring.cap(message, limit),
        output=scoring.cap(run.stdout, limit) if cfg.feedback.show_output and run.stdout else None,
        exception_type=etype, image=image,
    )


def grade_image(assignment: Assignment, files: dict[str, bytes], ctx: GradeContext) -> GradeReport:
    cases = list(enumerate(assignment.image_cases))
    reference: dict[str, Any] = {"cases": {}}
    if any(c.expected is None for _, c in cases):
        untimed = ctx.untimed()   # the reference is not on the submission's clock
        reference = ctx.store.get(assignment, lambda: compute_reference(assignment, untimed))
    expected = {i: _expected_image(assignment, i, c, reference) for i, c in cases}
    files = {**assignment.files, **files}
    findings = scoring.Findings()
    tests = []
    names: dict[str, Any] | None = None
    for i, case in cases:
        run = run_case(assignment, files, ctx, case)
        if run.status == "syntax":
            placeholders = [TestReport(name=_name(assignment, j), status=TestStatus.failed, weight=c.weight,
                                       visible=c.visible) for j, c in cases]
            return scoring.syntax_report(assignment, run.error, placeholders)
        if run.names is not None and names is None:
            names = run.names
            findings.missing = scoring.missing_required(assignment, names)
        tests.append(_judge(assignment, i, case, run, expected[i], findings))
    return scoring.build(assignment, tests, findings)
