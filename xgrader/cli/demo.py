"""`xgrader demo`: the main job end to end on embedded defaults."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="bundled queue + daemon + sample submissions, prints a results table",
        description="Start the bundled queue server (SQLite in a temp dir) and the daemon "
        "(local bubblewrap sandbox), submit every example assignment's samples/, wait for all "
        "results and print them. Exit 0 only if every submission got exactly one result.",
    )
    p.add_argument("--handlers", type=Path, help="assignments root (default: the bundled payload_handlers/)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for all results")
    p.add_argument("--sandbox", default="bwrap", choices=["bwrap", "docker", "auto"],
                   help="sandbox backend for the daemon (default bwrap)")
    p.add_argument("--keep", action="store_true",
                   help="leave the queue server and the daemon running (LMS callbacks go to the queue's own "
                   "sink); print the dashboard URL and a settings file for `history`, `regrade`")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xgrader.config import DEFAULT_HANDLERS
    from xgrader.daemon.demo_harness import DemoRun

    workdir = Path(tempfile.mkdtemp(prefix="xgrader-demo-"))
    demo = DemoRun(handlers=(args.handlers or DEFAULT_HANDLERS).resolve(), workdir=workdir,
                   timeout_s=args.timeout, keep=args.keep, sandbox=args.sandbox)
    code = demo.run()
    if code == 0 and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs kept in {workdir}")
    return code
