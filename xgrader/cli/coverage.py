"""`xgrader coverage`: which submissions get feedback they can act on, per criterion."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from xgrader.cli.grade import add_common, open_grader, parse_payload

EPILOG = """\
SUBMISSIONS: a folder (each entry one submission, as for `xgrader batch`), or the
gradebook JSON a `xgrader batch` run wrote (nothing is graded again).
For each criterion ([[criteria]], and the whole assignment) it reports, over the
submissions that lost points there: how many got at least one specific feedback item
(a line, a name, a type, a behaviour, an instructor's signature, or a visible failing
test), the average number of such items, how often each signature fired, and the
submissions that got nothing specific, each linked to its feedback in the HTML page:
the ones to write the next signature for.
--all-hidden grades as if every test were hidden (the usual setting of a course).
Exit 0 when the report was written; 1 when some submission could not be graded;
2/3 on bad arguments / an unusable sandbox.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "coverage", help="feedback coverage per criterion: who got specific feedback, who got none (HTML/JSON)",
        description="Grade a folder of submissions (or read a batch gradebook) and report how many "
        "got specific feedback, per criterion, with links to the feedback of those that got none.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--payload", required=True, help="the grader_payload text, e.g. '{\"grader\": \"is_prime\"}'")
    p.add_argument("--html", type=Path, help="write the report page here")
    p.add_argument("--json", type=Path, help="write the report data here (summary and every submission)")
    p.add_argument("--jobs", type=int, default=2, help="submissions graded at once (default 2)")
    p.add_argument("--all-hidden", action="store_true", help="grade with every test hidden")
    add_common(p)
    p.add_argument("submissions", type=Path, metavar="SUBMISSIONS", help="folder of submissions, or a gradebook .json")
    p.set_defaults(func=run)


def _from_gradebook(path: Path) -> tuple[str, list[dict[str, Any]]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        records = list(doc["submissions"])
        title = str(doc.get("title") or doc.get("assignment") or path.name)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"xgrader coverage: {path}: not a gradebook written by `xgrader batch` ({exc})", file=sys.stderr)
        raise SystemExit(2) from None
    return title, records


def _grade_folder(args: argparse.Namespace, payload: Any) -> tuple[str, list[dict[str, Any]]]:
    from xgrader import authoring, coverage
    from xgrader.cli.batch import Progress
    from xgrader.errors import AssignmentError, InfraError

    paths = authoring.submission_paths(args.submissions)
    if not paths:
        print(f"xgrader coverage: no submissions in {args.submissions}", file=sys.stderr)
        raise SystemExit(2)
    _settings, backend, grader = open_grader(args)
    try:
        try:
            assignment = grader.registry.get(payload.grader)
            if args.all_hidden:
                assignment = assignment.all_hidden()
            authoring.warm(grader, assignment)
        except (AssignmentError, InfraError) as exc:
            print(f"xgrader coverage: assignment {payload.grader!r} unusable: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        items, records = [], []
        for path in paths:
            try:
                items.append((path.name, authoring.request_for(
                    [path], payload.grader, submission_id=f"coverage-{path.name}", options=payload.options)))
            except (authoring.SubmissionReadError, OSError) as exc:
                records.append(coverage.record(path.name, None, str(exc)))
        results = authoring.grade_many(grader, items, jobs=args.jobs, progress=Progress(), assignment=assignment)
    finally:
        backend.close()
    records += [coverage.record(g.name, g.report, g.error, g.seconds) for g in results]
    return assignment.title, sorted(records, key=lambda r: r["file"])


def run(args: argparse.Namespace) -> int:
    from xgrader import coverage

    payload = parse_payload(args.payload)
    started = time.monotonic()
    if args.submissions.is_file() and args.submissions.suffix == ".json":
        title, records = _from_gradebook(args.submissions)
    elif args.submissions.is_dir():
        title, records = _grade_folder(args, payload)
    else:
        print(f"xgrader coverage: {args.submissions} is neither a folder nor a gradebook .json", file=sys.stderr)
        return 2
    summary = coverage.summarize(records)
    summary["seconds"] = round(time.monotonic() - started, 3)
    summary["all_hidden"] = bool(args.all_hidden)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"assignment": payload.grader, "title": title, "summary": summary,
                                         "submissions": records}, indent=2) + "\n", encoding="utf-8")
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(coverage.render_html(summary, records, title), encoding="utf-8")
    print(coverage.render_text(summary), flush=True)
    return 1 if summary["not_graded"] else 0
