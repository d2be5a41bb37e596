"""`xgrader grade`: grade one submission locally, print the exact reply body."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

EPILOG = """\
FILE: one text file (.py ...) is sent as typed code (student_response, saved under the
assignment's entry name); one other file (.ipynb, .zip), a folder, or several files are
sent as uploaded files. The payload is the problem's <grader_payload>: '{"grader": "is_prime"}'
or just the assignment name.
--hints previews the AI hint the daemon would add: it calls the configured endpoint
(XGRADER_HINTS__BASE_URL, __MODEL, __API_KEY or the --config file's [hints]) even if
XGRADER_HINTS__ENABLED is off, with a throwaway hint store (no quota, cache or audit of the
daemon is touched), and prints the hint decision on stderr. The assignment must enable hints.
Exit codes: 0 graded (any score); 2 bad arguments, unknown or broken assignment;
3 the sandbox or another part of the infrastructure failed.
"""


def add_common(p: argparse.ArgumentParser) -> None:
    """Options every local grading command shares (grade, batch, check)."""
    p.add_argument("--handlers", type=Path, help="assignments root (default: settings, payload_handlers/)")
    p.add_argument("--config", type=Path, help="TOML or JSON settings file (limits, sandbox, ...)")
    p.add_argument("--sandbox", choices=["auto", "bwrap", "docker", "unsafe"],
                   help="sandbox backend (default: settings; XGRADER_SANDBOX, auto)")
    p.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="allow --sandbox unsafe (runs student code unsandboxed; debugging only)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log every grading step to stderr (without: only real problems, one line each)")


def open_grader(args: argparse.Namespace, covered: tuple[str, ...] = ()) -> Any:
    """(settings, backend, Grader) from the common options; raises SystemExit(2/3)
    with a clear message when the settings or the sandbox are unusable.
    `covered`: log events the command reports itself (not repeated as warnings)."""
    from pydantic import ValidationError

    from xgrader import logs
    from xgrader.config import Settings
    from xgrader.grading import Grader
    from xgrader.backends import SandboxError, make_backend

    logs.configure_cli(args.verbose, covered)
    overrides: dict[str, Any] = {}
    if args.handlers is not None:
        overrides["handlers"] = args.handlers.resolve()
    if args.sandbox is not None:
        overrides["sandbox"] = args.sandbox
    try:
        settings = Settings.load(args.config, **overrides)
    except (ValidationError, OSError, ValueError) as exc:
        print(f"xgrader: bad settings: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if not Path(settings.handlers).is_dir():
        print(f"xgrader: handlers root {settings.handlers} is not a folder", file=sys.stderr)
        raise SystemExit(2)
    try:
        backend = make_backend(settings, unsafe_ok=args.unsafe_no_sandbox)
    except SandboxError as exc:
        print(f"xgrader: sandbox {settings.sandbox!r} unavailable: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
    return settings, backend, Grader(settings, backend)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grade", help="grade one submission locally; print the exact JSON reply body",
        description="Grade one submission the way the daemon would (same pipeline, same sandbox) "
        "and print exactly the xqueue reply body it would post: {\"correct\", \"score\", \"msg\"}.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--payload", required=True, help="the grader_payload text, e.g. '{\"grader\": \"is_prime\"}'")
    p.add_argument("--text", action="store_true", help="print the feedback as plain text instead of JSON")
    p.add_argument("--hints", action="store_true",
                   help="preview the AI hint: call the configured hint endpoint as the daemon would "
                   "(a throwaway store; the decision is printed on stderr)")
    p.add_argument("--staff", action="store_true",
                   help="print the feedback as text, then every test's hidden input, expected and actual "
                   "values, errors and what the student is told about it (course staff only)")
    p.add_argument("--record", action="store_true",
                   help="record the attempt in the attempt ledger (settings' [ledger] url)")
    p.add_argument("--student", help="with --record: the student id to record (default: the file name)")
    add_common(p)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="the submission (file(s) or a folder)")
    p.set_defaults(func=run)


def record_local(settings: Any, source: str, request: Any, report: Any, reply: Any, student: str,
                 submission_id: str = "", timings: dict | None = None, recorder: Any = None) -> bool:
    """Record one locally graded submission in the attempt ledger (grade
    --record, batch); a ledger that cannot be used is a warning, the grade
    stands. Returns whether it was recorded."""
    from xgrader.hooks import Hooks
    from xgrader.job import GradedSubmission
    from xgrader.ledger import LedgerHooks

    class Outcome(Hooks):
        ok = False

        def on_ledger(self, outcome: str, seconds: float) -> None:
            Outcome.ok = outcome == "recorded"

    hooks = recorder or LedgerHooks(settings.ledger, handlers=settings.handlers)
    hooks.report_to = Outcome()
    request = request.model_copy(update={"submission_id": submission_id or request.submission_id})
    hooks.on_attempt(GradedSubmission(source=source, request=request, report=report, reply=reply,
                                      student=student, graded_at=time.time(), timings=timings or {}))
    if not Outcome.ok:
        print(f"xgrader: warning: the attempt was not recorded in the ledger ({settings.ledger.url})",
              file=sys.stderr)
    return Outcome.ok


def parse_payload(text: str) -> Any:
    from xgrader.wire import GraderPayload

    try:
        return GraderPayload.parse(text)
    except ValueError as exc:  # pydantic's ValidationError and json's errors are ValueErrors
        print(f"xgrader: bad --payload: {str(exc).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args: argparse.Namespace) -> int:
    from xgrader import authoring, pipeline
    from xgrader.errors import InfraError
    from xgrader.report import Outcome
    from xgrader.backends import SandboxError

    payload = parse_payload(args.payload)
    try:
        request = authoring.request_for(args.files, payload.grader, submission_id="local",
                                        options=payload.options, hint_type=payload.hint_type)
    except (authoring.SubmissionReadError, OSError) as exc:
        print(f"xgrader: {exc}", file=sys.stderr)
        return 2
    settings, backend, grader = open_grader(args)
    preview = _HintPreview(settings, grader) if args.hints else None
    try:
        started = time.perf_counter()
        report, reply = pipeline.grade_request(request, settings, backend,
                                               hints=preview.stage if preview else None)
        timings = {"grade": time.perf_counter() - started}
    except (InfraError, SandboxError) as exc:
        print(f"xgrader: could not grade (infrastructure): {exc}", file=sys.stderr)
        return 3
    finally:
        backend.close()
        if preview is not None:
            preview.report()
    if args.record:
        record_local(settings, "grade", request, report, reply, args.student or args.files[0].name,
                     submission_id=args.files[0].name, timings=timings)
    from xgrader import feedback

    try:
        if args.staff:
            from xgrader import coverage
            print(feedback.render_text(report) + coverage.staff_text(report), flush=True)
        else:
            print(feedback.render_text(report) if args.text else reply.to_body(), flush=True)
    except BrokenPipeError:  # `| head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if report.outcome is Outcome.error:
        # The reply above is what a student would get; for staff it is a setup problem.
        print(f"xgrader: assignment {payload.grader!r} could not be used; see the message above",
              file=sys.stderr)
        return 2
    return 0


class _HintPreview:
    """The daemon's hint stage on a throwaway SQLite store in a temporary
    folder: the configured endpoint is called, nothing of the daemon's store
    (quotas, cache, audit) is read or written."""

    def __init__(self, settings: Any, grader: Any) -> None:
        import tempfile

        from xgrader.hints import HintStage
        from xgrader.hints.store import SQLiteStore

        self._dir = tempfile.TemporaryDirectory(prefix="xgrader-hint-preview-")
        self.store = SQLiteStore(Path(self._dir.name) / "hints.db")
        # No student page (its records would not be in the daemon's store), no staff answers.
        hints = settings.hints.model_copy(update={"enabled": True, "store": f"sqlite:///{self._dir.name}/hints.db",
                                                  "page_url": None, "answers_in_feedback": False})
        self.stage = HintStage(settings.model_copy(update={"hints": hints}), store=self.store,
                               registry=grader.registry, grade_files=grader.grade_files)

    def report(self) -> None:
        try:
            records = self.store.audit_list(limit=1)
            if not records:
                print("xgrader: hint: none asked (full marks, or the submission could not be graded)",
                      file=sys.stderr)
                return
            r = records[0]
            calls = len(r.attempts)
            detail = f"{r.hint_type.value if r.hint_type else '-'}, model {r.model}, {calls} call(s), " \
                     f"{r.tokens} tokens, {r.seconds:.1f} s"
            why = f": {r.reason}" if r.reason else ""
            print(f"xgrader: hint: {r.outcome.value} ({detail}){why}", file=sys.stderr)
            for a in r.attempts:
                if a.verdict != "ok":
                    print(f"xgrader: hint: {a.step} rejected: {a.verdict}", file=sys.stderr)
        finally:
            self.store.close()
            self._dir.cleanup()
