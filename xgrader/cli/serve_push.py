"""`xgrader serve-push`: xqueue's push (passive grader) mode."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
xqueue POSTs {"xqueue_body": "<LMS body>", "xqueue_files": "{...}"} (raw JSON, no
content type) to the queue's grader URL and forwards the HTTP 200 response text
to the LMS within 30 s. Each request is graded in a forked child with a hard
deadline (--deadline, at most 28 s), with the same assignments, sandbox backend,
limits and metrics as `xgrader run`.

xqueue never retries a push: a request that finds all --concurrency slots taken
waits for one while it could still be graded within the 30 s (the grading deadline
shrinks to what is left); only then does it get 503. Run several replicas behind
a load balancer that checks /readyz.

Answers: 200 {"correct","score","msg"}; 200 could-not-grade body on a timeout or
infrastructure failure; 400 {"error"} for a body that is not a push request;
503 {"error": "busy"} when no slot freed in time.
GET /healthz, /readyz and /metrics are served on the same port (and on
XGRADER_METRICS_PORT when set). SIGTERM/SIGINT stop accepting requests; those
being graded still get their answer, then the process exits 0.
Settings: defaults < --config FILE < XGRADER_* environment < flags (see `xgrader run --help`).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve-push", help="push mode: answer xqueue's passive-grader POSTs with the result body",
        description="Serve xqueue's push (passive grader) requests: grade each POSTed "
        "submission in a sandbox and answer with the result body.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=18050, help="listen port (default 18050; 0 picks one)")
    p.add_argument("--config", type=Path, help="TOML or JSON settings file")
    p.add_argument("--handlers", type=Path, help="assignments root")
    p.add_argument("--sandbox", help="auto | bwrap | docker | unsafe")
    p.add_argument("--concurrency", type=int, help="requests graded at once; more wait for a slot")
    p.add_argument("--deadline", type=float, help="per-request hard limit, seconds (max 28)")
    p.add_argument("--metrics-port", type=int, help="also serve /metrics, /healthz, /readyz here")
    p.add_argument("--log-format", help="auto | json | console")
    p.add_argument("--log-level", help="debug | info | warning | error")
    p.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="allow --sandbox unsafe (runs student code unsandboxed; debugging only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    import structlog

    from xgrader.config import Settings
    from xgrader.daemon import wiring
    from xgrader.hooks import HookChain
    from xgrader.metrics import MetricsHooks, build_hooks
    from xgrader.push import MAX_DEADLINE_S, PushServer
    from xgrader.backends import SandboxError, make_backend

    overrides = {field: value for field, value in (
        ("handlers", args.handlers), ("sandbox", args.sandbox), ("concurrency", args.concurrency),
        ("metrics_port", args.metrics_port), ("log_format", args.log_format),
        ("log_level", args.log_level)) if value is not None}
    settings = Settings.load(args.config, **overrides)
    wiring.configure_logging(settings)
    log = structlog.get_logger("xgrader.cli.serve_push")
    if args.deadline is not None and not 0 < args.deadline <= MAX_DEADLINE_S:
        log.error("bad_deadline", deadline=args.deadline, max=MAX_DEADLINE_S)
        return 2
    metrics = build_hooks(settings) if settings.metrics_port else MetricsHooks()
    if not isinstance(metrics, MetricsHooks):
        metrics = MetricsHooks()
    recorder = wiring._ledger_hooks(settings)   # the attempt ledger, schema ready before any fork
    hooks = HookChain(metrics, recorder) if recorder is not None else HookChain(metrics)
    if recorder is not None:
        recorder.report_to = hooks
    try:
        backend = make_backend(settings, unsafe_ok=args.unsafe_no_sandbox)
    except SandboxError as exc:
        log.error("sandbox_unavailable", error=str(exc))
        return 2
    server = PushServer(settings, backend, hooks=hooks, metrics=metrics,
                        hints=wiring.build_hints(settings, hooks), deadline_s=args.deadline)

    def stop(signum, _frame) -> None:
        log.info("push_server_stopping", signal=signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve(args.host, args.port)
    except OSError as exc:
        log.error("push_listen_failed", host=args.host, port=args.port, error=str(exc))
        return 2
    finally:
        backend.close()
    return 0
