"""`xgrader run`: the grader daemon."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
Settings come from defaults < --config FILE (TOML or JSON) < environment < flags.
Environment (every Settings field is XGRADER_<FIELD>, nested XGRADER_HINTS__<FIELD>):
  XGRADER_QUEUE_URL            queue server base URL (default http://127.0.0.1:18040/xqueue/)
  XGRADER_QUEUE_NAMES          comma-separated queues to serve (default xgrader)
  XGRADER_QUEUE_USER           queue login user (default xgrader)
  XGRADER_QUEUE_PASSWORD       queue password (or XGRADER_QUEUE_PASSWORD_FILE); never logged
  XGRADER_BASIC_AUTH_USER / XGRADER_BASIC_AUTH_PASSWORD   HTTP Basic auth for a proxy
  XGRADER_HANDLERS             assignments root (default: the bundled example assignments)
  XGRADER_SANDBOX              auto | bwrap | docker | unsafe (unsafe needs --unsafe-no-sandbox)
  XGRADER_CONCURRENCY          submissions graded at once per queue (default 2)
  XGRADER_JOB_TIMEOUT_S        hard wall-clock limit of one submission's child (default 120)
  XGRADER_MAX_ATTEMPTS         failed gradings before "could not be graded" (default 3)
  XGRADER_SCORE_FORMAT         auto | points | fraction (edx-submissions); per queue XGRADER_SCORE_FORMATS
  XGRADER_LOGIN_MAX_REFUSALS   refused logins in a row before exiting 3 (default 12, about a minute)
  XGRADER_BACKEND_UNREADY_EXIT_S   sandbox backend failing its check this long: exit 4 (default 300)
  XGRADER_FILE_HOSTS           file hosts allowed although on loopback/private addresses
  XGRADER_SHUTDOWN_GRACE_S     first SIGTERM: time in-flight jobs get to finish (default 30)
  XGRADER_STALL_TIMEOUT_S      no loop progress for this long -> exit 70 (default 300)
  XGRADER_POLL_MIN_S / XGRADER_POLL_MAX_S   empty-queue backoff bounds (default 0.05 / 5)
  XGRADER_WARM_POOL            sandboxes pre-started per forked child while the daemon waits for work
                               (bwrap with cgroups: default 1, idle pull-to-post ~3x shorter
                               for about the same CPU; 0 turns it off)
  XGRADER_METRICS_PORT         /metrics, /healthz, /readyz (default off)
  XGRADER_METRICS_HOST         their listen address (default 127.0.0.1; 0.0.0.0 in containers)
  XGRADER_LOG_FORMAT / XGRADER_LOG_LEVEL    auto|json|console / info
Signals: first SIGTERM/SIGINT stops pulling and lets in-flight jobs post (exit 0);
a second one kills them at once (their leases expire, nothing is lost; exit 1).
Exit 2: no sandbox backend. Exit 3: the queue refused the login XGRADER_LOGIN_MAX_REFUSALS
times in a row. Exit 4: the sandbox backend failed its check for XGRADER_BACKEND_UNREADY_EXIT_S.
Exit 70: the stall watchdog fired. Nothing is pulled before the login and the backend check pass.
"""

FLAGS = [
    # (flag, settings field, type, help)
    ("--queue-url", "queue_url", str, "queue server base URL"),
    ("--queue", "queue_names", str, "comma-separated queue names to serve"),
    ("--handlers", "handlers", Path, "assignments root"),
    ("--sandbox", "sandbox", str, "auto | bwrap | docker | unsafe"),
    ("--concurrency", "concurrency", int, "submissions graded at once per queue"),
    ("--job-timeout", "job_timeout_s", float, "hard limit of one submission, seconds"),
    ("--max-attempts", "max_attempts", int, "failed gradings before could-not-grade"),
    ("--shutdown-grace", "shutdown_grace_s", float, "seconds in-flight jobs get on SIGTERM"),
    ("--metrics-port", "metrics_port", int, "serve /metrics, /healthz, /readyz on this port"),
    ("--metrics-host", "metrics_host", str, "listen address of the metrics port (default 127.0.0.1)"),
    ("--log-level", "log_level", str, "debug | info | warning | error"),
    ("--log-format", "log_format", str, "auto | json | console"),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="the grader daemon: pull, grade in a sandbox, post results",
        description="Pull submissions from an xqueue server, grade each in a forked, "
        "watchdog-guarded child using the sandbox backend, post {correct, score, msg} back.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML or JSON settings file")
    p.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="allow XGRADER_SANDBOX=unsafe (runs student code unsandboxed; debugging only)")
    for flag, _field, kind, text in FLAGS:
        p.add_argument(flag, type=kind, help=text)
    p.set_defaults(func=run)


def overrides_from(args: argparse.Namespace) -> dict:
    out = {}
    for flag, field, _kind, _text in FLAGS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            out[field] = value
    return out


def run(args: argparse.Namespace) -> int:
    import structlog

    from xgrader.config import Settings
    from xgrader.daemon import Daemon
    from xgrader.daemon import wiring
    from xgrader.backends import SandboxError, make_backend

    settings = Settings.load(args.config, **overrides_from(args))
    wiring.configure_logging(settings)
    log = structlog.get_logger("xgrader.cli.run")
    hooks = wiring.build_hooks(settings)
    hints = wiring.build_hints(settings, hooks)  # before any sandbox starts: a missing extra stops here
    try:
        backend = make_backend(settings, unsafe_ok=args.unsafe_no_sandbox, daemon=True)
    except SandboxError as exc:
        log.error("sandbox_unavailable", error=str(exc))
        return 2
    client = wiring.build_client(settings, hooks)
    return Daemon(settings, client, backend, hooks, hints=hints).run()

