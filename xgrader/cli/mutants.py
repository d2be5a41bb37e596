"""`xgrader mutants`: are the hidden tests strong enough? Mutants of the
reference solution, graded in the sandbox; the score and every survivor."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xgrader.cli.grade import add_common, open_grader

EPILOG = """\
Operators: compare (< <= > >= == != is in swapped), arith (+ - * / // % ** swapped),
bool (and/or, not x -> x, True/False), const (numbers +1 and -1), range (range()
bounds off by one), negate (if/while conditions negated), delete (a statement
replaced by pass), return_none (return x -> return None), swap_args (two
positional arguments swapped).
A surviving mutant is a change to the reference solution that every test
still passes: a bug a student could hand in for full marks (or an equivalent
rewrite: then nothing is missing). Timeouts and mutants that fail to load
count as killed, and are listed apart.
Exit 0; 1 below --min-score; 2/3 on bad arguments / an unusable sandbox.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mutants", help="mutation testing of an assignment's tests: score and surviving mutants",
        description="Make mutants of the assignment's reference solution, grade each against the "
        "assignment's tests in the sandbox (in parallel), print the mutation score and every "
        "surviving mutant as a unified diff with its line.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("assignment", help="assignment name under the handlers root")
    p.add_argument("--operators", help="comma-separated operators (default: all)")
    p.add_argument("--jobs", type=int, default=2, help="mutants graded at once (default 2)")
    p.add_argument("--min-score", type=float, help="exit 1 when the mutation score is below this (0..1)")
    p.add_argument("--write", type=Path, metavar="DIR",
                   help="also write each mutant's source to DIR/<id>_<operator>_line<N>/<file>, its diff "
                   "beside it, and DIR/mutants.toml (to curate into a mutation assignment's mutants/)")
    p.add_argument("--all", action="store_true", dest="show_killed", help="list killed mutants too")
    p.add_argument("--json", action="store_true", help="the full report as JSON")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xgrader.errors import AssignmentError, InfraError
    from xgrader.mutation import mutants_for
    from xgrader.mutation.run import render, run_mutants

    operators = [o.strip() for o in args.operators.split(",")] if args.operators else None
    _settings, backend, grader = open_grader(args)
    try:
        try:
            assignment = grader.registry.get(args.assignment)
            mutants = mutants_for(assignment.solution, operators)
        except (AssignmentError, ValueError) as exc:
            print(f"xgrader mutants: {exc}", file=sys.stderr)
            return 2
        if not mutants:
            print(f"xgrader mutants: no mutants: {args.assignment}'s solution/ has no Python code to mutate",
                  file=sys.stderr)
            return 2
        if args.write:
            write_mutants(args.write, mutants)
        from xgrader.mutation.run import MUTABLE_KINDS

        if assignment.config.kind not in MUTABLE_KINDS:
            if args.write:   # a mutation assignment: its mutants are for the students' tests to catch
                print(f"wrote {len(mutants)} mutants to {args.write} (curate them into "
                      f"{args.assignment}/mutants/; a {assignment.config.kind!r} assignment's mutants are not "
                      "graded here)")
                return 0
            print(f"xgrader mutants: {args.assignment} is a {assignment.config.kind!r} assignment: mutation "
                  "testing grades mutants with the assignment's tests (pytest and io kinds); --write DIR "
                  "generates mutants to curate", file=sys.stderr)
            return 2

        def progress(done: int, total: int) -> None:
            if sys.stderr.isatty():
                print(f"\r[{done}/{total}] mutants", end="" if done < total else "\n", file=sys.stderr,
                      flush=True)

        try:
            report = run_mutants(grader, assignment, mutants, jobs=args.jobs, progress=progress)
        except AssignmentError as exc:
            print(f"xgrader mutants: {exc}", file=sys.stderr)
            return 2
        except InfraError as exc:
            print(f"xgrader mutants: could not grade (infrastructure): {exc}", file=sys.stderr)
            return 3
    finally:
        backend.close()
    try:
        if args.json:
            print(json.dumps({**report.model_dump(mode="json"), "score": report.score}, indent=2))
        else:
            print(render(report, show_killed=args.show_killed), flush=True)
    except BrokenPipeError:  # `| head`: the reader left
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if args.min_score is not None and report.score < args.min_score:
        print(f"\nmutation score {report.score:.2f} is below --min-score {args.min_score:g}")
        return 1
    return 0


def write_mutants(folder: Path, mutants: list) -> None:
    """DIR/<id>_<operator>_line<N>/<file> (+ MUTANT.txt: the change) for each
    mutant, and DIR/mutants.toml with a table per mutant to describe: the
    layout an assignment's mutants/ folder takes (docs/assignments.md)."""
    tables = ["# One table per mutant: describe the behaviour it changes (shown to students for visible\n"
              "# mutants), set weight / visible, and delete the folders of equivalent mutants.\n"]
    for m in mutants:
        name = f"{m.id}_{m.operator}_line{m.line}"
        target = folder / name / m.file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(m.source)
        (folder / name / "MUTANT.txt").write_text(m.header() + "\n\n" + m.diff())
        tables.append(f"\n[{name}]\n# {m.file}:{m.line} {m.operator}: {m.description}\ndescription = \"\"\n")
    (folder / "mutants.toml").write_text("".join(tables))
