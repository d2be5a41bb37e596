"""The instructor-in-the-loop actions of `xgrader hints`: the escalation
queue (list, show, claim, release, answer, close), the helpful-rate report,
and deleting data (one student's, or everything older than N days)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from xgrader.hints.records import OPEN_STATES, EscalationState, Refused

EPILOG = """\
  xgrader hints escalations list [--state open|waiting|claimed|answered|closed|all]   oldest first
  xgrader hints escalations show 7             code as graded, feedback, hint, note, hidden tests
  xgrader hints escalations claim 7 --as ana   (release 7 gives it back)
  xgrader hints escalations answer 7 --text "..." | --file answer.txt | --file -
  xgrader hints escalations close 7
  xgrader hints report [--by assignment,type,model] [--csv]
  xgrader hints forget-student ANON_ID         delete everything kept about one student
  xgrader hints purge --older-than 180         delete decisions and hints older than 180 days"""

STATES = {"open": list(OPEN_STATES), "all": None, **{s.value: [s] for s in EscalationState}}


def register(acts: argparse._SubParsersAction) -> None:
    esc = acts.add_parser("escalations", help="students' questions about hints: list, show, claim, answer, close",
                          description="The queue of hints students rated not helpful and sent to the staff, "
                          "oldest first. Answers appear on the student's hint page.")
    ea = esc.add_subparsers(dest="esc_action", metavar="ACTION", required=True)
    ls = ea.add_parser("list", help="the queue, oldest first")
    ls.add_argument("--state", choices=list(STATES), default="open", help="which requests (default open)")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true", help="one JSON record per line")
    show = ea.add_parser("show", help="one request with the code, feedback, hint and hidden tests")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    for name, text in (("claim", "claim a request so nobody else answers it"),
                       ("release", "give a claimed request back to the queue"),
                       ("close", "close a request (answered or not)")):
        p = ea.add_parser(name, help=text)
        p.add_argument("id", type=int)
        p.add_argument("--as", dest="staff", help="your name (default: the login name)")
    ans = ea.add_parser("answer", help="answer a request (the student reads it on their hint page)")
    ans.add_argument("id", type=int)
    src = ans.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the answer")
    src.add_argument("--file", type=Path, help="a file with the answer ('-' reads stdin)")
    ans.add_argument("--as", dest="staff", help="your name (default: the login name)")

    rep = acts.add_parser("report", help="helpful rate by assignment, hint type and model (table or CSV)",
                          description="Ratings of delivered hints with a student page, escalations and the "
                          "mean time to answer, grouped by any of assignment, type, model.")
    rep.add_argument("--by", default="assignment,type,model",
                     help="comma-separated: assignment, type, model (default all three)")
    rep.add_argument("--csv", action="store_true", help="CSV on stdout instead of a table")

    forget = acts.add_parser("forget-student", help="delete everything kept about one student",
                             description="Delete one student's hint decisions (prompts with their code), "
                             "delivered hints, ratings, escalations and answers, the cached hints made from "
                             "their code, and their quota counters. The id is the LMS's anonymous_student_id "
                             "(shown in `xgrader hints escalations show` and `xgrader hints show`).")
    forget.add_argument("student")
    purge = acts.add_parser("purge", help="delete decisions and hints older than N days",
                            description="Delete hint decisions, delivered hints and their ratings, "
                            "escalations and answers, and cached hints, older than N days. Run it daily "
                            "(cron, a systemd timer) to enforce a retention period.")
    purge.add_argument("--older-than", type=float, required=True, metavar="DAYS")


def _staff(args: argparse.Namespace) -> str:
    name = args.staff or os.environ.get("USER") or ""
    if not name:
        try:
            name = getpass.getuser()
        except Exception:
            name = ""
    return name


def run(store: Any, args: argparse.Namespace) -> int:
    if args.action == "report":
        return _report(store, args)
    if args.action == "forget-student":
        counts = store.forget_student(args.student)
        print(f"deleted for {args.student}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        return 0
    if args.action == "purge":
        if args.older_than < 0:
            print("xgrader hints purge: --older-than must be 0 or more days", file=sys.stderr)
            return 2
        counts = store.purge(time.time() - args.older_than * 86400)
        print(f"deleted what is older than {args.older_than:g} days: "
              + ", ".join(f"{v} {k}" for k, v in counts.items()))
        return 0
    return _escalations(store, args)


def _report(store: Any, args: argparse.Namespace) -> int:
    from xgrader.hints.ratings_report import DIMENSIONS, as_csv, table

    by = [b.strip() for b in args.by.split(",") if b.strip()]
    if not by or any(b not in DIMENSIONS for b in by):
        print(f"xgrader hints report: --by takes {', '.join(DIMENSIONS)}", file=sys.stderr)
        return 2
    stats = store.loop_stats()
    sys.stdout.write(as_csv(stats, by) if args.csv else table(stats, by) + "\n")
    return 0


def _escalations(store: Any, args: argparse.Namespace) -> int:
    from xgrader.hints import pages

    act = args.esc_action
    if act == "list":
        items = store.escalations(STATES[args.state], limit=args.limit)
        if args.json:
            for x in items:
                print(x.model_dump_json())
            return 0
        now = time.time()
        print(f"{'ID':>5}  {'ASKED':20} {'AGE':>7}  {'ASSIGNMENT':16} {'STATE':9} {'BY':12} NOTE")
        for x in items:
            who = x.claimed_by if x.state is EscalationState.claimed else (x.answered_by or x.closed_by or "")
            print(f"{x.id:>5}  {pages.when(x.at):20} {pages.ago(x.at, now):>7}  {x.assignment[:16]:16} "
                  f"{x.state.value:9} {(who or '-')[:12]:12} {x.note.replace(chr(10), ' ')[:60]}")
        if not items:
            print(f"(no {args.state} requests)")
        return 0
    esc = store.escalation_get(args.id)
    if esc is None:
        print(f"xgrader hints escalations: no request {args.id}", file=sys.stderr)
        return 1
    if act == "show":
        delivery = store.delivery_get(esc.audit_id)
        if args.json:
            print(json.dumps({"escalation": json.loads(esc.model_dump_json()),
                              "delivery": json.loads(delivery.model_dump_json()) if delivery else None}, indent=2))
        else:
            print(_render(esc, delivery, store.rating_get(esc.audit_id)))
        return 0
    staff = _staff(args)
    text = ""
    if act == "answer":
        if args.text is not None:
            text = args.text
        else:
            text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text()
    try:
        new = store.escalation_act(args.id, act, staff, text)
    except Refused as exc:
        print(f"xgrader hints escalations {act}: {exc}", file=sys.stderr)
        return 1 if exc.status in (404, 409) else 2
    print(f"request {new.id}: {new.state.value}" + (f" by {staff}" if new.state is not EscalationState.waiting
                                                    else " (back in the queue)"))
    return 0


def _render(esc: Any, d: Any, rating: Any) -> str:
    from xgrader.hints.pages import when

    lines = [f"request {esc.id}  {esc.state.value}  asked {when(esc.at)}",
             f"assignment: {esc.assignment}   student: {esc.student or '(anonymous)'}   hint decision: {esc.audit_id}"
             f"   type: {esc.hint_type.value}   model: {esc.model}"]
    if esc.claimed_by:
        lines.append(f"claimed by: {esc.claimed_by} ({when(esc.claimed_at)})")
    lines += ["", "note:", f"  {esc.note or '(none)'}", "", "hint:", f"  {d.hint if d else '(not kept)'}",
              f"rated {'helpful' if rating and rating.helpful else 'not helpful'}"]
    if esc.answer:
        lines += ["", f"answer by {esc.answered_by} ({when(esc.answered_at)}):", f"  {esc.answer}"]
    if d is None:
        lines.append("(the submission was not kept)")
        return "\n".join(lines)
    lines += ["", f"submission {d.submission_id}: score {d.score:g}/{d.max_score:g}"]
    for name, text in d.files.items():
        lines += [f"--- {name}", text.rstrip("\n")]
    lines += ["--- feedback the student saw", d.feedback.rstrip("\n"), "--- tests (staff view)"]
    for t in d.tests:
        lines.append(f"{'hidden ' if not t.visible else ''}{t.name}: {t.status}"
                     + (f" ({t.exception_type})" if t.exception_type else ""))
        detail = t.definition if not t.visible else "\n".join(
            f"{k}: {v}" for k, v in (("input", t.input), ("expected", t.expected), ("actual", t.actual),
                                     ("message", t.message)) if v)
        if not t.visible and t.happened:   # what the hidden test gave (staff only)
            detail = (detail or "") + "\nwhat happened:\n" + "\n".join(f"{k}: {v}" for k, v in t.happened.items())
        lines += [f"    {line}" for line in (detail or "").splitlines()]
    return "\n".join(lines)
