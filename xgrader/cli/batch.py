"""`xgrader batch`: grade a folder of submissions in parallel, write a gradebook."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from xgrader.cli.grade import add_common, open_grader, parse_payload

EPILOG = """\
Each entry of SUBMISSIONS_DIR is one submission: a text file is typed code, another
file (.ipynb, .zip) is an upload, a subfolder is a multi-file upload.
Writes FILE.csv (file, score, max, correct, outcome, one column per test with its
status) and FILE.json next to it (the same plus the feedback items, the rubric, the
exact msg, a staff view of every test with hidden inputs, expected and actual values
and errors, and the list of submissions whose feedback gave the student nothing to
act on; `xgrader coverage` reads it). Progress goes to stderr. Staff only: the JSON
holds hidden test values.
Exit 0 when every submission was graded; 1 when some could not be (they are in the
gradebook with outcome "not graded"); 2/3 on bad arguments / an unusable sandbox.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch", help="grade a folder of submissions in parallel, write a CSV/JSON gradebook",
        description="Grade every submission in a folder with one shared grader (expected values "
        "computed once) and write a gradebook as CSV and JSON.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--payload", required=True, help="the grader_payload text, e.g. '{\"grader\": \"is_prime\"}'")
    p.add_argument("--out", required=True, type=Path, help="gradebook CSV path (the JSON goes next to it)")
    p.add_argument("--jobs", type=int, default=2, help="submissions graded at once (default 2)")
    p.add_argument("--no-record", action="store_true",
                   help="do not record the attempts in the attempt ledger (recorded by default, each "
                   "under its file name as the student; settings' [ledger])")
    add_common(p)
    p.add_argument("submissions", type=Path, metavar="SUBMISSIONS_DIR", help="folder of submissions")
    p.set_defaults(func=run)


class Progress:
    """A one-line "\\r[12/40]" progress display on stderr (plain lines when not a TTY)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr   # looked up now: sys.stderr may have been replaced
        self.tty = self.stream.isatty()
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        text = f"[{done}/{total}] {time.monotonic() - self.started:.1f}s"
        if self.tty:
            print(f"\r{text}", end="" if done < total else "\n", file=self.stream, flush=True)
        elif done == total or done % 10 == 0:
            print(text, file=self.stream, flush=True)


def gradebook_rows(results: list[Any], max_points: float) -> tuple[list[str], list[dict[str, Any]]]:
    """CSV header and rows: fixed columns, then one column per test name (in first-seen order)."""
    from xgrader import authoring

    tests: list[str] = []
    for g in results:
        for t in (g.report.tests if g.report else []):
            if t.name not in tests:
                tests.append(t.name)
    header = ["file", "score", "max", "correct", "outcome", "useful_feedback", *tests]
    rows = []
    for g in results:
        r = g.report
        row: dict[str, Any] = {"file": g.name}
        if r is None:
            row.update(score="", max=f"{max_points:g}", correct="", outcome="not graded", useful_feedback="")
        else:
            row.update(score=f"{r.score:g}", max=f"{r.max_score:g}", correct=str(r.correct).lower(),
                       outcome=r.outcome.value,
                       useful_feedback=str(authoring.useful_feedback(r)).lower())
            row.update({t.name: t.status.value for t in r.tests})
        rows.append(row)
    return header, rows


def run(args: argparse.Namespace) -> int:
    from xgrader import authoring
    from xgrader.errors import AssignmentError, InfraError

    payload = parse_payload(args.payload)
    if not args.submissions.is_dir():
        print(f"xgrader batch: {args.submissions} is not a folder", file=sys.stderr)
        return 2
    paths = authoring.submission_paths(args.submissions)
    if not paths:
        print(f"xgrader batch: no submissions in {args.submissions}", file=sys.stderr)
        return 2
    settings, backend, grader = open_grader(args)
    try:
        try:
            assignment = grader.registry.get(payload.grader)
            authoring.warm(grader, assignment)
        except (AssignmentError, InfraError) as exc:
            print(f"xgrader batch: assignment {payload.grader!r} unusable: {exc}", file=sys.stderr)
            return 2
        items = []
        unreadable: list[Any] = []
        for path in paths:
            try:
                items.append((path.name, authoring.request_for(
                    [path], payload.grader, submission_id=f"batch-{path.name}",
                    options=payload.options, hint_type=payload.hint_type)))
            except (authoring.SubmissionReadError, OSError) as exc:
                unreadable.append(authoring.Graded(name=path.name, error=str(exc)))
        started = time.monotonic()
        results = authoring.grade_many(grader, items, jobs=args.jobs, progress=Progress())
        elapsed = time.monotonic() - started
    finally:
        backend.close()
    recorded = 0
    if not args.no_record and settings.ledger.enabled:
        recorded = record_batch(settings, dict(items), results)
    results = sorted(results + unreadable, key=lambda g: g.name)
    write_gradebook(args.out, results, assignment, payload.grader, elapsed)
    graded = [g for g in results if g.report is not None]
    full = sum(g.report.correct for g in graded)
    no_help = [g.name for g in graded if not authoring.useful_feedback(g.report)]
    print(f"{len(graded)}/{len(results)} graded in {elapsed:.1f}s, {full} at full marks; "
          f"gradebook: {args.out} and {args.out.with_suffix('.json')}")
    if no_help:
        print(f"{len(no_help)} got no useful feedback (bare score, no explanation, no visible failing test): "
              + ", ".join(no_help))
    if recorded:
        print(f"recorded {recorded} attempts in the ledger ({settings.ledger.url})")
    for g in results:
        if g.report is None:
            print(f"not graded: {g.name}: {g.error}", file=sys.stderr)
    return 0 if len(graded) == len(results) else 1


def record_batch(settings: Any, requests: dict[str, Any], results: list[Any]) -> int:
    """Each graded submission into the attempt ledger, its file name as the student."""
    from xgrader import pipeline
    from xgrader.cli.grade import record_local
    from xgrader.ledger import LedgerHooks

    recorder = LedgerHooks(settings.ledger, handlers=settings.handlers)
    recorded = 0
    for g in results:
        if g.report is None:
            continue
        if not record_local(settings, "batch", requests[g.name], g.report, pipeline.reply_for(g.report), g.name,
                            submission_id=g.name, timings={"grade": g.seconds}, recorder=recorder):
            break   # the warning is printed once
        recorded += 1
    recorder.ledger().close()
    return recorded


def write_gradebook(out: Path, results: list[Any], assignment: Any, grader_name: str, elapsed: float) -> None:
    from xgrader import authoring, coverage

    header, rows = gradebook_rows(results, assignment.max_points)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, restval="")
        writer.writeheader()
        writer.writerows(rows)
    doc = {
        "assignment": grader_name, "title": assignment.title, "max_points": assignment.max_points,
        "seconds": round(elapsed, 3),
        # Each: score, outcome, tests (with the staff view of hidden values),
        # feedback items, rubric and the exact msg (xgrader.coverage.record).
        "submissions": [{
            **coverage.record(g.name, g.report, g.error, g.seconds),
            "useful_feedback": authoring.useful_feedback(g.report) if g.report else None,
        } for g in results],
        "no_useful_feedback": [g.name for g in results if g.report and not authoring.useful_feedback(g.report)],
    }
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
