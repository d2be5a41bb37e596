"""`xgrader history` (a student's or an assignment's attempts) and
`xgrader ledger prune|delete-student|show` (retention, privacy, one attempt)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any


def add_ledger_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML or JSON settings file (its [ledger] url)")
    p.add_argument("--ledger", metavar="URL", help="the ledger: sqlite:///PATH or postgresql://... "
                   "(default: settings, XGRADER_LEDGER__URL, sqlite:///xgrader-ledger.db)")


def open_ledger(args: argparse.Namespace) -> Any:
    """The Ledger from --ledger or the settings; SystemExit(2) with a clear message."""
    from pydantic import ValidationError

    from xgrader.config import Settings
    from xgrader.ledger import DatabaseError, Ledger
    from xgrader.ledger.db import sqlite_path

    try:
        settings = Settings.load(getattr(args, "config", None))
    except (ValidationError, OSError, ValueError) as exc:
        print(f"xgrader: bad settings: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    url = getattr(args, "ledger", None) or settings.ledger.url
    path = sqlite_path(url)
    if path is not None and not path.exists():
        print(f"xgrader: no ledger at {path} (nothing recorded yet, or give --ledger URL)", file=sys.stderr)
        raise SystemExit(2)
    try:
        ledger = Ledger(url, max_file_bytes=settings.ledger.max_file_bytes,
                        connect_timeout_s=settings.ledger.connect_timeout_s)
        ledger.migrate()
    except DatabaseError as exc:
        print(f"xgrader: ledger unusable: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return ledger


def parse_when(text: str) -> float:
    """A date (2026-01-31) or a date and time (2026-01-31T14:00, UTC unless an offset is given)."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def when_text(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "history", help="a student's or an assignment's recorded attempts (table or JSON)",
        description="Print attempts from the attempt ledger, oldest first: when, student, assignment, "
        "score, outcome, the feedback signatures that fired, where it came from.")
    p.add_argument("--student", help="the student's anonymised id (or a batch file name)")
    p.add_argument("--assignment", help="the assignment name")
    p.add_argument("--since", type=parse_when, help="only attempts graded at or after this date (UTC)")
    p.add_argument("--limit", type=int, default=1000, help="at most this many attempts (default 1000)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    add_ledger_option(p)
    p.set_defaults(func=history)

    lp = sub.add_parser("ledger", help="the attempt ledger: show one attempt, retention, delete a student",
                        description="Maintenance of the attempt ledger (docs/ledger.md).")
    lsub = lp.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    show = lsub.add_parser("show", help="one attempt in full: files, tests (hidden ones too), feedback")
    show.add_argument("attempt", type=int, help="the attempt id (from `xgrader history`)")
    show.add_argument("--json", action="store_true", help="JSON (files as text where they are UTF-8)")
    add_ledger_option(show)
    show.set_defaults(func=show_attempt)
    prune = lsub.add_parser("prune", help="delete attempts and files older than N days",
                            description="Retention: delete every attempt graded more than DAYS days ago and "
                            "the stored files no remaining attempt refers to. Default DAYS: the "
                            "ledger.retention_days setting (the daemon also applies it as it records).")
    prune.add_argument("--days", type=float, help="retention in days (default: ledger.retention_days)")
    add_ledger_option(prune)
    prune.set_defaults(func=prune_cmd)
    delete = lsub.add_parser("delete-student", help="delete one student's attempts and files",
                             description="Remove every attempt of one student and every stored file that "
                             "only their attempts referred to (files other students also submitted stay).")
    delete.add_argument("student", help="the anonymised id, as `xgrader history` shows it")
    add_ledger_option(delete)
    delete.set_defaults(func=delete_student)


def history(args: argparse.Namespace) -> int:
    if not args.student and not args.assignment:
        print("xgrader history: give --student ID and/or --assignment NAME", file=sys.stderr)
        return 2
    ledger = open_ledger(args)
    try:
        rows = ledger.history(student=args.student, assignment=args.assignment, since=args.since,
                              limit=args.limit)
    finally:
        ledger.close()
    if args.json:
        for a in rows:
            print(json.dumps({**a.model_dump(), "graded_at_utc": when_text(a.graded_at)}, sort_keys=True))
        return 0
    if not rows:
        print("no attempts recorded" + (f" for student {args.student}" if args.student else "")
              + (f" on {args.assignment}" if args.assignment else ""))
        return 0
    table = [("id", "graded (UTC)", "student", "assignment", "score", "outcome", "source", "submission",
              "version", "signatures")]
    for a in rows:
        table.append((str(a.id), when_text(a.graded_at), a.student, a.assignment,
                      f"{a.score:g}/{a.max_score:g}", a.outcome,
                      a.source + (f" of #{a.regrade_of}" if a.regrade_of else ""),
                      f"{a.queue}/{a.submission_id}" if a.queue else a.submission_id,
                      a.assignment_version[:8], "; ".join(a.signatures)))
    print(render_table(table))
    return 0


def render_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def show_attempt(args: argparse.Namespace) -> int:
    ledger = open_ledger(args)
    try:
        attempt = ledger.get(args.attempt)
    finally:
        ledger.close()
    if attempt is None:
        print(f"xgrader ledger show: no attempt {args.attempt}", file=sys.stderr)
        return 1
    if args.json:
        doc = attempt.model_dump(exclude={"files"})
        doc["files"] = {n: d.decode("utf-8", "replace") for n, d in attempt.files.items()}
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print(f"attempt {attempt.id}: {attempt.assignment} ({attempt.assignment_version}) by {attempt.student}, "
          f"{when_text(attempt.graded_at)} UTC, {attempt.source}"
          + (f", {attempt.queue}/{attempt.submission_id}" if attempt.queue else ""))
    print(f"score {attempt.score:g}/{attempt.max_score:g} ({attempt.outcome})"
          + (f"; signatures: {'; '.join(attempt.signatures)}" if attempt.signatures else ""))
    for t in attempt.tests:
        extra = ", ".join(f"{k}={str(v)[:80]!r}" for k, v in t.detail.items())
        print(f"  {'visible' if t.visible else 'hidden '} {t.status:<8} {t.points:g}/{t.weight:g}  {t.name}"
              + (f"  ({extra})" if extra else ""))
    if attempt.student_response:
        print("--- typed response ---\n" + attempt.student_response.rstrip())
    for name, data in attempt.files.items():
        print(f"--- file {name} ({len(data)} bytes) ---")
    return 0


def prune_cmd(args: argparse.Namespace) -> int:
    from xgrader.config import Settings

    days = args.days
    if days is None:
        days = Settings.load(args.config).ledger.retention_days
    if not days or days <= 0:
        print("xgrader ledger prune: give --days N (or set ledger.retention_days)", file=sys.stderr)
        return 2
    ledger = open_ledger(args)
    try:
        attempts, blobs = ledger.prune(days)
    finally:
        ledger.close()
    print(f"deleted {attempts} attempts older than {days:g} days and {blobs} stored files")
    return 0


def delete_student(args: argparse.Namespace) -> int:
    ledger = open_ledger(args)
    try:
        attempts, blobs = ledger.delete_student(args.student)
    finally:
        ledger.close()
    print(f"deleted {attempts} attempts of {args.student} and {blobs} stored files")
    return 0
