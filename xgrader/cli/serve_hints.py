"""`xgrader serve-hints`: the AI hints' student pages and staff escalation
queue on their own, for deployments that grade from a real xqueue (the
bundled queue server mounts the same pages itself)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

EPILOG = """\
Serves, on waitress (a production WSGI server), the pages under the path of
XGRADER_HINTS__PAGE_URL (e.g. https://grader.example.edu/hints/):
  h/<signed link>   a student's hint page: rate it, ask the staff, read the answer
  staff/            the escalation queue (log in with --user NAME:PASSWORD)
The daemon must use the same XGRADER_HINTS__STORE, __PAGE_URL and __LINK_SECRET.
Put TLS in front (a reverse proxy) when the page URL is https. Without --user the
staff pages are off: use `xgrader hints escalations`.
Prints 'xgrader serve-hints listening on URL' when ready; SIGTERM/SIGINT stop it
after the requests in progress.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve-hints", help="serve the AI hint pages (students' links, staff escalations)",
                       description="Serve the AI hints' student pages and the staff escalation queue.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="TOML or JSON settings file (its [hints] table)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=18060, help="listen port (default 18060; 0 picks one)")
    p.add_argument("--user", action="append", dest="users", metavar="NAME:PASSWORD",
                   help="a staff login; repeat for several. Also XGRADER_HINTS_STAFF_USERS=NAME:PW,NAME:PW")
    p.add_argument("--session-ttl", type=float, default=12 * 3600.0, metavar="S",
                   help="staff login lifetime in seconds (default 12 h)")
    p.add_argument("--threads", type=int, default=8, help="waitress worker threads (default 8)")
    p.add_argument("--metrics-port", type=int, help="also serve /metrics (ratings, escalations) on this port")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, make_wsgi_app
    from pydantic import ValidationError

    from xgrader.config import Settings
    from xgrader.hints.loop_metrics import HintLoopCollector
    from xgrader.hints.staff_login import FormLogin
    from xgrader.hints.web import HintPages
    from xgrader.logs import configure
    from xgrader.queue_server.config import parse_user
    from xgrader.wsgi_server import WSGIServer

    try:
        settings = Settings.load(args.config)
        specs = list(args.users or []) + [u for u in os.environ.get("XGRADER_HINTS_STAFF_USERS", "").split(",")
                                          if u.strip()]
        users = dict(parse_user(u.strip()) for u in specs)
    except (ValidationError, ValueError, OSError) as exc:
        print(f"xgrader serve-hints: bad settings: {exc}", file=sys.stderr)
        return 2
    cfg = settings.hints
    if not cfg.page_url or cfg.link_secret is None:
        print("xgrader serve-hints: set XGRADER_HINTS__PAGE_URL and XGRADER_HINTS__LINK_SECRET "
              "(the daemon needs the same)", file=sys.stderr)
        return 2
    configure(SimpleNamespace(log_format=settings.log_format, log_level=settings.log_level))
    pages = HintPages(cfg)
    if users:
        pages.auth = FormLogin(pages.links, users, ttl_s=args.session_ttl)
        pages.logout_url = pages.staff_base + "logout"
    try:
        pages.store.loop_stats()   # a wrong store URL is an error now, not at the first student
    except Exception as exc:
        print(f"xgrader serve-hints: cannot open the hint store {cfg.store}: {exc}", file=sys.stderr)
        return 2
    try:
        server = WSGIServer(pages.wsgi, args.host, args.port, threads=args.threads, name="hints")
        metrics = None
        if args.metrics_port is not None:
            registry = CollectorRegistry()
            registry.register(HintLoopCollector(cfg.store))
            metrics = WSGIServer(make_wsgi_app(registry), args.host, args.metrics_port, threads=1,
                                 max_connections=32, name="hint-metrics")
    except OSError as exc:
        print(f"xgrader serve-hints: cannot listen: {exc}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda _signum, _frame: stopping.set())   # a flag only; the main thread stops
    server.start()
    if metrics is not None:
        metrics.start()
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"xgrader serve-hints listening on http://{host}:{server.port}{pages.prefix}"
          + (f" (metrics on port {metrics.port})" if metrics is not None else "")
          + ("" if users else " (staff pages off: no --user)"), flush=True)
    while not stopping.wait(1.0):
        pass
    server.shutdown()   # requests in progress finish and are answered
    if metrics is not None:
        metrics.shutdown(grace_s=1.0)
    print("xgrader serve-hints stopped", flush=True)
    return 0
