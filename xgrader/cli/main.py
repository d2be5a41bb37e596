"""Entry point of the `xgrader` console script.

Each subcommand lives in its own module under xgrader/cli/ and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from xgrader import __version__

# Module names under xgrader.cli, in the order `--help` lists them.
SUBCOMMANDS = [
    "demo", "run", "queue", "submit", "grade", "batch", "check", "coverage", "init", "hints", "serve_push",
    "serve_hints", "history", "mutants", "regrade", "mastery", "selector",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xgrader",
        description="xqueue-compatible external grader: pulls submissions, grades them "
        "in a sandbox against hidden tests, posts {correct, score, msg} back.",
    )
    parser.add_argument("--version", action="version", version=f"xgrader {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"xgrader.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from xgrader.extras import MissingExtra

    try:
        try:
            args = build_parser().parse_args(argv)
            return int(args.func(args) or 0)
        finally:
            sys.stdout.flush()  # a reader that left shows up here, not at interpreter exit
    except MissingExtra as exc:  # an optional feature without its extra: one line, no traceback
        print(f"xgrader: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `xgrader ... | head`: the reader is gone. Stop quietly with the status
        # of a program ended by SIGPIPE, as cat or grep would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError, AttributeError):
                pass
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
