"""`xgrader queue serve|status`: the bundled xqueue-compatible queue server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("queue", help="the bundled queue server (serve, status)",
                       description="The bundled xqueue-compatible queue server: SQLite-backed, "
                       "leases with atomic pulls, LMS callbacks with retries, dashboard at /.")
    qsub = p.add_subparsers(dest="queue_command", metavar="ACTION", required=True)

    s = qsub.add_parser("serve", help="run the queue server until SIGTERM/SIGINT",
                        description="Serve the grader side (login/, get_queuelen/, get_submission/, "
                        "put_result/) and the LMS side (submit/) of xqueue with legacy xqueue's exact "
                        "replies, uploaded files under /xqueue/files/, a read-only overview at /, and the "
                        "submissions dashboard at /xqueue/dashboard/ (behind the login; docs/ledger.md). "
                        "Flags win over the config file. Prints 'xgrader queue listening on URL' when ready.")
    s.add_argument("--config", type=Path, help="TOML or JSON file with any of: host, port, db, queues, "
                   "users (table NAME = PASSWORD), lease_timeout_s, session_ttl_s, mode, delivery_tries, "
                   "delivery_backoff_s, delivery_timeout_s, max_upload_bytes, external_dicts_over, "
                   "max_connections, threads, idle_timeout_s, ledger, "
                   "dashboard_page_size")
    s.add_argument("--host", help="listen address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="listen port (default 18040; 0 = any free port)")
    s.add_argument("--db", type=Path, help="SQLite database (default ./xgrader-queue.db)")
    s.add_argument("--queue", action="append", dest="queues", metavar="NAME",
                   help="a queue name; repeat for several (default: xgrader)")
    s.add_argument("--user", action="append", dest="users", metavar="NAME:PASSWORD",
                   help="a login; repeat for several. Also XGRADER_QUEUE_SERVER_USERS=NAME:PW,NAME:PW "
                   "(logs: XGRADER_LOG_FORMAT, XGRADER_LOG_LEVEL)")
    s.add_argument("--user-file", action="append", dest="user_files", metavar="NAME:FILE",
                   help="a login whose password is FILE's content (one line; a secrets file such as "
                   "/run/secrets/NAME, so no password shows in the environment or the command line); "
                   "repeat for several")
    s.add_argument("--lease-timeout", type=float, dest="lease_timeout_s", metavar="S",
                   help="seconds before an unanswered pull is served again (default 60)")
    s.add_argument("--session-ttl", type=float, dest="session_ttl_s", metavar="S",
                   help="login session lifetime in seconds (default two weeks)")
    s.add_argument("--mode", choices=["legacy", "edx"],
                   help="legacy (HTTP 200 envelopes, default) or edx (edx-submissions status codes, CSRF enforced)")
    s.add_argument("--delivery-tries", type=int, dest="delivery_tries", help="LMS callback attempts (default 5)")
    s.add_argument("--delivery-backoff", type=float, dest="delivery_backoff_s", metavar="S",
                   help="first retry delay of LMS callbacks, doubled per try (default 1)")
    s.add_argument("--hints-config", type=Path, metavar="FILE",
                   help="the daemon's settings file whose [hints] page_url and link_secret turn on the AI hint "
                   "pages (student links, staff escalations behind the dashboard login); XGRADER_HINTS__* "
                   "environment variables work too (docs/hints.md)")
    s.add_argument("--max-connections", type=int, dest="max_connections", metavar="N",
                   help="clients connected at once; more wait until one leaves (default 100)")
    s.add_argument("--ledger", metavar="URL",
                   help="the graders' attempt ledger (sqlite:///PATH or postgresql://...): the dashboard's "
                   "submission pages show its history, staff view and files")
    s.set_defaults(func=serve)

    st = qsub.add_parser("status", help="print queues and the latest submissions from a database",
                         description="Read a queue database (the server may be running) and print per-queue "
                         "counts and the latest submissions with their states and results.")
    st.add_argument("--db", type=Path, required=True, help="the queue server's SQLite database")
    st.add_argument("--limit", type=int, default=20, help="how many latest submissions (default 20)")
    st.add_argument("--json", action="store_true",
                    help="one JSON object instead of the tables: queues (counts) and submissions (each with "
                    "its state, pulls, puts, result {correct, score, msg} and delivery state)")
    st.set_defaults(func=status)


def serve(args: argparse.Namespace) -> int:
    import os

    from pydantic import ValidationError

    from xgrader.queue_server import QueueServer, QueueServerConfig

    users = list(args.users or [])
    env_users = os.environ.get("XGRADER_QUEUE_SERVER_USERS", "")
    users += [u for u in env_users.split(",") if u.strip()]
    try:
        users += [read_user_file(spec) for spec in args.user_files or []]
    except ValueError as exc:
        print(f"xgrader queue serve: {exc}", file=sys.stderr)
        return 2
    try:
        config = QueueServerConfig.load(
            args.config, host=args.host, port=args.port, db=args.db, queues=args.queues,
            users=users or None, lease_timeout_s=args.lease_timeout_s, session_ttl_s=args.session_ttl_s,
            mode=args.mode, delivery_tries=args.delivery_tries, delivery_backoff_s=args.delivery_backoff_s,
            max_connections=args.max_connections, ledger=args.ledger)
    except (ValidationError, ValueError, OSError) as exc:
        print(f"xgrader queue serve: bad configuration: {exc}", file=sys.stderr)
        return 2
    if not config.users:
        print("xgrader queue serve: no users: give --user NAME:PASSWORD at least once", file=sys.stderr)
        return 2
    try:
        from xgrader.config import Settings

        hint_settings = Settings.load(args.hints_config).hints
        if hint_settings.page_url:
            from xgrader.queue_server.hint_routes import check_hint_settings
            check_hint_settings(hint_settings)
    except (ValidationError, ValueError, OSError) as exc:
        print(f"xgrader queue serve: bad hint settings: {exc}", file=sys.stderr)
        return 2
    from types import SimpleNamespace

    from xgrader.logs import configure
    configure(SimpleNamespace(log_format=os.environ.get("XGRADER_LOG_FORMAT", "auto"),
                              log_level=os.environ.get("XGRADER_LOG_LEVEL", "info")))
    try:
        server = QueueServer(config)
    except OSError as exc:
        print(f"xgrader queue serve: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    if hint_settings.page_url:
        from xgrader.queue_server.hint_routes import attach_hint_pages
        attach_hint_pages(server.app, hint_settings)
    return server.serve_forever()


def read_user_file(spec: str) -> str:
    """NAME:FILE -> NAME:PASSWORD, the password being FILE's one line."""
    name, sep, path = spec.partition(":")
    if not sep or not name or not path:
        raise ValueError(f"--user-file must be NAME:FILE, got {spec!r}")
    try:
        password = Path(path).read_text().strip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--user-file {name}: cannot read {path}: {exc.__class__.__name__}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    if not password or "\n" in password:
        raise ValueError(f"--user-file {name}: {path} must hold the password on one line")
    return f"{name}:{password}"


def status(args: argparse.Namespace) -> int:
    import json

    from xgrader.queue_server.store import Store

    if not args.db.exists():
        print(f"no such database: {args.db}", file=sys.stderr)
        return 2
    store = Store(args.db)
    try:
        counts, rows = store.overview(limit=args.limit)
    finally:
        store.close()
    if args.json:
        print(json.dumps(status_json(counts, rows)))
        return 0
    print("queue  waiting  leased  answered  retired  delivered  delivery_failed")
    for c in counts:
        print("  ".join(str(v or 0) if i else str(v) for i, v in enumerate(c)))
    print()
    print("id  queue  lms_key  state  pulls  puts  correct  score  delivery")
    for (sid, queue, lms_key, state, _leased, pulls, puts, result, delivery, tries, error, _c) in rows:
        correct = score = ""
        if result:
            try:
                data = json.loads(result)
                correct, score = data.get("correct"), data.get("score")
            except (ValueError, AttributeError):
                correct = "?"
        print(f"{sid}  {queue}  {lms_key}  {state}  {pulls}  {puts}  {correct}  {score}  {delivery}"
              + (f" ({error})" if error else ""))
    return 0


def status_json(counts: list[tuple], rows: list[tuple]) -> dict:
    import json

    names = ("waiting", "leased", "answered", "retired", "delivered", "delivery_failed")
    subs = []
    for (sid, queue, lms_key, state, _leased, pulls, puts, result, delivery, tries, error, created) in rows:
        try:
            parsed = json.loads(result) if result else None
        except ValueError:
            parsed = result
        subs.append({"id": sid, "queue": queue, "lms_key": lms_key, "state": state, "pulls": pulls, "puts": puts,
                     "result": parsed, "delivery": delivery, "delivery_tries": tries, "delivery_error": error,
                     "created": created})
    return {"queues": [{"queue": c[0], **{n: c[i + 1] or 0 for i, n in enumerate(names)}} for c in counts],
            "submissions": subs}
