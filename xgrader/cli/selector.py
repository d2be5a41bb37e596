"""`xgrader selector` and `xgrader serve-selector`: a TutorShop-compatible
problem selector, external (stdin/stdout) and remote (HTTP POST)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xgrader.mastery.catalog import SkillCatalog
    from xgrader.mastery.store import LedgerEvidence
    from xgrader.selector.engine import Selector

# Exit codes of `xgrader selector` (docs/selector.md).
EXIT_BAD_REQUEST = 2
EXIT_COMPLETE = 3
EXIT_SETUP = 4
EXIT_INTERNAL = 70

EPILOG = """\
The request JSON (skills, dynamic_model, problem_set, problems, ...) comes on
standard input; the reply {"problem_name", "dynamic_model"} goes to standard
output. Errors are JSON too, {"error": {"code", "message"}}, on standard output,
with exit code 2 (bad_request, too_large), 3 (problem_set_complete) or 4 (a
configuration or policy error). Policies: mastery (default), fixed, random, or
one registered under the entry-point group xgrader.selectors. See docs/selector.md.
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="selector.toml: problems -> assignments and skills, students")
    p.add_argument("--handlers", type=Path, help="handlers root (skills.toml, assignments' skills)")
    p.add_argument("--policy", help="mastery | fixed | random | an entry point's name (default: the config's)")
    p.add_argument("--seed", type=int, help="seed of the random policy (default: drawn once per student)")
    p.add_argument("--ledger", help="attempt ledger whose mastery evidence to merge "
                   "(default: XGRADER_LEDGER__URL; 'none' for the request's skills only)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("selector", help="pick a student's next problem (TutorShop external selector)",
                       description="Answer one TutorShop selector request from standard input.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.set_defaults(func=run_external)

    s = sub.add_parser("serve-selector", help="serve the selector over HTTP (TutorShop remote selector)",
                       description="Answer TutorShop selector requests POSTed as JSON. GET /healthz and "
                       "/metrics on the same port. A bearer token from XGRADER_SELECTOR_TOKEN or "
                       "--token-file is required when set.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(s)
    s.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=18060, help="listen port (default 18060)")
    s.add_argument("--token-file", type=Path, help="file holding the bearer token")
    s.add_argument("--threads", type=int, default=4, help="worker threads (default 4)")
    s.set_defaults(func=run_remote)


def build_selector(args: argparse.Namespace) -> "Selector":
    """Everything a selection needs, loaded once. Raises ConfigError or
    SelectorError (policy) with a one-line message."""
    from xgrader.dispatch import AssignmentRegistry
    from xgrader.errors import AssignmentError
    from xgrader.mastery.catalog import load_catalog
    from xgrader.selector.config import ConfigError, load_config, load_student_map
    from xgrader.selector.engine import Selector

    config = load_config(args.config)
    handlers = args.handlers
    if handlers is None:
        from xgrader.config import Settings
        handlers = Settings.load(None).handlers
    try:
        catalog = load_catalog(handlers)
    except AssignmentError as exc:
        raise ConfigError(str(exc)) from None
    registry = AssignmentRegistry(handlers)

    def assignment_skills(name: str) -> tuple[str, ...]:
        try:
            return registry.get(name).declared_skills()
        except AssignmentError:
            return ()

    return Selector(config, catalog=catalog, policy=args.policy, students=load_student_map(config),
                    evidence=_evidence(args, catalog), assignment_skills=assignment_skills, seed=args.seed)


def _evidence(args: argparse.Namespace, catalog: "SkillCatalog") -> "LedgerEvidence | None":
    """The ledger's mastery for --ledger URL; by default the configured
    ledger when its SQLite file exists (nothing is created); 'none': off."""
    from xgrader.ledger.db import Database, DatabaseError, sqlite_path
    from xgrader.mastery.store import LedgerEvidence, MasteryStore
    from xgrader.selector.config import ConfigError

    url = args.ledger
    if url == "none":
        return None
    if url is None:
        from xgrader.config import Settings

        ledger = Settings.load(None).ledger
        if not ledger.enabled:
            return None
        url = ledger.url
        path = sqlite_path(url)
        if path is not None and not path.exists():
            return None
    try:
        store = MasteryStore(Database(url))
        store.migrate()
    except DatabaseError as exc:
        raise ConfigError(f"ledger unusable: {exc}") from None
    return LedgerEvidence(store, catalog)


def _fail(code: str, message: str, status: int) -> int:
    sys.stdout.write(json.dumps({"error": {"code": code, "message": message}}) + "\n")
    return status


def run_external(args: argparse.Namespace) -> int:
    from xgrader.selector.config import ConfigError
    from xgrader.selector.protocol import MAX_REQUEST_BYTES, SelectorError

    try:
        selector = build_selector(args)
    except ConfigError as exc:
        return _fail("config_error", str(exc), EXIT_SETUP)
    except SelectorError as exc:
        return _fail(exc.code, exc.message, EXIT_SETUP if exc.code == "policy_error" else EXIT_BAD_REQUEST)
    raw = sys.stdin.buffer.read(MAX_REQUEST_BYTES + 1)
    try:
        reply = selector.answer(raw)
    except SelectorError as exc:
        status = {"problem_set_complete": EXIT_COMPLETE, "policy_error": EXIT_SETUP}.get(exc.code, EXIT_BAD_REQUEST)
        return _fail(exc.code, exc.message, status)
    except Exception as exc:  # noqa: BLE001  (the LMS gets JSON, never a traceback)
        return _fail("internal_error", f"{type(exc).__name__}: {exc}"[:500], EXIT_INTERNAL)
    sys.stdout.write(json.dumps(reply) + "\n")
    return 0


def run_remote(args: argparse.Namespace) -> int:
    from xgrader.selector.config import ConfigError
    from xgrader.selector.protocol import MAX_REQUEST_BYTES, SelectorError
    from xgrader.selector.web import SelectorApp
    from xgrader.wsgi_server import WSGIServer

    token = os.environ.get("XGRADER_SELECTOR_TOKEN", "")
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            print(f"xgrader serve-selector: cannot read --token-file: {exc.strerror}", file=sys.stderr)
            return EXIT_SETUP
    try:
        selector = build_selector(args)
    except (ConfigError, SelectorError) as exc:
        print(f"xgrader serve-selector: {exc}", file=sys.stderr)
        return EXIT_SETUP
    import signal
    import threading

    try:
        server = WSGIServer(SelectorApp(selector, token=token or None), args.host, args.port,
                            threads=args.threads, max_body_bytes=MAX_REQUEST_BYTES, name="selector")
    except OSError as exc:
        print(f"xgrader serve-selector: cannot listen: {exc}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda _signum, _frame: stopping.set())   # a flag only; the main thread stops
    server.start()
    print(f"xgrader serve-selector: listening on http://{server.host}:{server.port}/", file=sys.stderr, flush=True)
    while not stopping.wait(1.0):
        pass
    server.shutdown()
    return 0
