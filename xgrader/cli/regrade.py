"""`xgrader regrade`: grade recorded submissions again with the current
assignment version; a dry run unless --deliver."""

from __future__ import annotations

import argparse
import json
import sys

from xgrader.cli.grade import add_common, open_grader
from xgrader.cli.history import parse_when, render_table

EPILOG = """\
Without --deliver nothing changes: the table shows what a regrade would do.
With --deliver every new result is recorded in the ledger (source "regrade") and,
for submissions pulled from the bundled queue server, posted to it (the settings'
queue_url, queue_user and password) to be delivered to the LMS exactly once.
Real xqueue has no regrade path: see docs/ledger.md for what to do there.
Exit 0; 1 when some submission could not be regraded or posted; 2/3 on bad
arguments / an unusable sandbox or ledger.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "regrade", help="grade recorded submissions again with the current tests (dry run by default)",
        description="Re-grade the submissions recorded in the attempt ledger for an assignment with its "
        "current version, and print old -> new score per submission and a summary.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--assignment", required=True, help="the assignment name")
    p.add_argument("--since", type=parse_when, help="only submissions last graded at or after this date (UTC)")
    p.add_argument("--student", help="only this student's submissions")
    p.add_argument("--deliver", action="store_true",
                   help="record the new results and post them through the bundled queue server's LMS delivery")
    p.add_argument("--jobs", type=int, default=2, help="submissions graded at once (default 2)")
    p.add_argument("--json", action="store_true", help="the result as JSON")
    p.add_argument("--ledger", metavar="URL", help="the ledger (default: the settings' [ledger] url)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xgrader.cli.history import open_ledger
    from xgrader.regrade import QueuePoster, deliver, regrade, select

    ledger = open_ledger(args)
    settings, backend, grader = open_grader(args)
    try:
        attempts = select(ledger, args.assignment, since=args.since, student=args.student)
        if not attempts:
            print(f"no recorded submissions of {args.assignment}"
                  + (f" by {args.student}" if args.student else "") + " to regrade")
            return 0

        def progress(done: int, total: int) -> None:
            if sys.stderr.isatty():
                print(f"\r[{done}/{total}]", end="" if done < total else "\n", file=sys.stderr, flush=True)

        result, reports = regrade(grader, args.assignment, attempts, jobs=args.jobs, progress=progress)
    finally:
        backend.close()
    failed = False
    if args.deliver:
        poster = None
        if any(a.queue and a.source in ("daemon", "regrade") for a in attempts):
            try:
                poster = QueuePoster(settings)
            except Exception as exc:
                print(f"xgrader regrade: cannot log in to the queue at {settings.queue_url}: {exc}; "
                      "nothing delivered, nothing recorded", file=sys.stderr)
                return 1
        deliver(result, attempts, reports, ledger, poster)
        failed = any(r.delivered.startswith("not") for r in result.rows)
    ledger.close()
    if args.json:
        print(json.dumps(result.model_dump(), indent=2))
    else:
        table = [("attempt", "student", "submission", "old", "new", "change", "delivered" if args.deliver else "")]
        for r in result.rows:
            new = "-" if r.new_score is None else f"{r.new_score:g}"
            table.append((str(r.attempt), r.student, f"{r.queue}/{r.submission_id}" if r.queue else r.submission_id,
                          f"{r.old_score:g}/{r.max_score:g}", f"{new}/{r.max_score:g}",
                          r.change + (f" ({r.error})" if r.error else ""), r.delivered))
        print(render_table(table))
        print()
        print(result.summary() + f" (assignment version {result.version[:12]}, regrade {result.regrade_id})")
        if not args.deliver:
            print("dry run: nothing recorded or delivered (--deliver to post the new results)")
    return 1 if failed or result.count("error") else 0
