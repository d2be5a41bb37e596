"""`xgrader hints`: the instructor-in-the-loop view of AI hints. Every hint
decision is in the hint store's audit log (prompt sent, reply, guard
verdict, delivered or not); staff list and read them, block a cached hint,
or switch hints off for one assignment. The escalation queue, the
helpful-rate report and data deletion are in cli/hint_staff.py."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from xgrader.cli import hint_staff

EPILOG = """\
examples:
  xgrader hints list --assignment squares      newest decisions first
  xgrader hints show 42                        prompts, replies and verdicts of decision 42
  xgrader hints block 42                       never serve that hint again (drops it from the cache)
  xgrader hints disable squares                no hints for this assignment from now on
  xgrader hints enable squares
{staff}
The store is the daemon's: XGRADER_HINTS__STORE, the config file's [hints] store, or --store
(sqlite:///PATH or redis://HOST:PORT/DB). Exit 0 on success, 1 for an unknown ID, 2 on bad arguments.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hints", help="audit, block and switch off AI hints",
        description="Read the AI hint audit log; block a cached hint; switch hints off or on per assignment.",
        epilog=EPILOG.format(staff=hint_staff.EPILOG), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="daemon config file (TOML or JSON) naming the hint store")
    p.add_argument("--store", help="hint store URL (overrides the config)")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = acts.add_parser("list", help="recent hint decisions, newest first")
    ls.add_argument("--assignment", help="only this assignment")
    ls.add_argument("--limit", type=int, default=30, help="how many (default 30)")
    ls.add_argument("--json", action="store_true", help="one JSON record per line")
    show = acts.add_parser("show", help="one decision in full: prompts sent, replies, verdicts")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true", help="the record as JSON")
    block = acts.add_parser("block", help="block a hint: it is never served from the cache again")
    block.add_argument("id", type=int)
    off = acts.add_parser("disable", help="switch hints off for an assignment")
    off.add_argument("assignment")
    on = acts.add_parser("enable", help="switch hints back on for an assignment")
    on.add_argument("assignment")
    hint_staff.register(acts)
    p.set_defaults(func=run)


def _store_url(args: argparse.Namespace) -> str:
    if args.store:
        return args.store
    from xgrader.config import Settings

    return Settings.load(args.config).hints.store


def run(args: argparse.Namespace) -> int:
    from xgrader.hints.store import open_store

    try:
        store = open_store(_store_url(args))
    except Exception as exc:  # bad URL, unreachable redis, unreadable config
        print(f"xgrader hints: cannot open the hint store: {exc}", file=sys.stderr)
        return 2
    try:
        if args.action in ("escalations", "report", "forget-student", "purge"):
            return hint_staff.run(store, args)
        if args.action == "list":
            return _list(store, args)
        if args.action == "show":
            record = store.audit_get(args.id)
            if record is None:
                print(f"xgrader hints: no decision {args.id}", file=sys.stderr)
                return 1
            print(record.model_dump_json(indent=2) if args.json else _render(record))
            return 0
        if args.action == "block":
            if not store.block(args.id):
                print(f"xgrader hints: no decision {args.id}", file=sys.stderr)
                return 1
            print(f"blocked decision {args.id}: its hint is no longer served")
            return 0
        store.set_disabled(args.assignment, args.action == "disable")
        print(f"hints {'disabled' if args.action == 'disable' else 'enabled'} for {args.assignment}")
        return 0
    finally:
        store.close()


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _list(store, args: argparse.Namespace) -> int:
    records = store.audit_list(limit=args.limit, assignment=args.assignment)
    if args.json:
        for r in records:
            print(r.model_dump_json())
        return 0
    off = store.disabled()
    if off:
        print(f"hints switched off for: {', '.join(off)}")
    print(f"{'ID':>6}  {'TIME (UTC)':19}  {'ASSIGNMENT':16} {'TYPE':12} {'OUTCOME':14} HINT / REASON")
    for r in records:
        text = (r.hint or r.reason or "").replace("\n", " ")
        flag = " [blocked]" if r.blocked else ""
        print(f"{r.id:>6}  {_when(r.at)}  {r.assignment[:16]:16} {(r.hint_type.value if r.hint_type else '-'):12} "
              f"{r.outcome.value:14} {text[:60]}{flag}")
    return 0


def _render(r) -> str:
    lines = [
        f"decision {r.id}  {_when(r.at)} UTC{'  [blocked]' if r.blocked else ''}",
        f"assignment: {r.assignment}   submission: {r.submission_id}   student: {r.student}",
        f"type: {r.hint_type.value if r.hint_type else '-'}   model: {r.model}   prompt version: {r.prompt_version}",
        f"outcome: {r.outcome.value}{' (' + r.reason + ')' if r.reason else ''}   delivered: {r.delivered}",
        f"tokens: {r.tokens}   seconds: {r.seconds}",
    ]
    if r.source_audit_id:
        lines.append(f"served from the cache: hint of decision {r.source_audit_id}")
    if r.repair:
        lines.append(f"repair: {r.repair}")
    if r.hint:
        lines += ["hint:", f"  {r.hint}"]
    for i, a in enumerate(r.attempts, 1):
        lines.append(f"--- call {i}: {a.step}  verdict: {a.verdict}  tokens: {a.tokens}  {a.seconds}s")
        for m in a.messages:
            lines.append(f"[{m.get('role')}]")
            lines.append(m.get("content", ""))
        lines += ["[reply]", a.reply if a.reply is not None else "(none)"]
    return "\n".join(lines)

