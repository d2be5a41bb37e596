"""Entry point of the `xgrader` console script.

Each subcommand lives in its own module under xgrader/cli/ and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from xgrader import __version__

# Module names under xgrader.cli, in the order `--help` lists them.
SUBCOMMANDS = [
    "demo", "run", "queue", "submit", "grade", "batch", "check", "init", "hints", "serve_push", "serve_hints",
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

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MissingExtra as exc:  # an optional feature without its extra: one line, no traceback
        print(f"xgrader: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
