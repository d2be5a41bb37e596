"""`xgrader check`: lint an assignment and prove its tests tell right from wrong."""

from __future__ import annotations

import argparse
import json
import sys

from xgrader.cli.grade import add_common, open_grader

EPILOG = """\
What is checked, per assignment:
  * with --mutants: mutants of the reference solution are graded (`xgrader mutants`),
    and a mutation score below --min-score (default 0.8) fails the check;
  * assignment.toml and tests/cases.toml validate (errors name the file and the field);
  * solution/ holds the entry file; description.md and samples/ exist (warnings);
  * the reference solution gets full marks;
  * every samples/correct* gets full marks, every other sample gets less
    (a wrong sample at full marks means the tests miss that mistake).
Samples: a text file is typed code, another file (.ipynb, .zip) or a folder is uploaded.
A reference solution that does not load or fails a test is shown with why: the
exception, its message and the line. Scores show at most two decimals (--json:
full precision).
Exit 0 when every checked assignment passes, 1 when one fails, 2/3 on bad
arguments / an unusable sandbox.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="lint an assignment; reference must get full marks, wrong samples less",
        description="Validate assignment folders and grade their reference solution and samples/ "
        "in the sandbox; print a readable report; non-zero exit on any failure.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("assignment", nargs="?", help="assignment name under the handlers root (e.g. is_prime)")
    p.add_argument("--all", action="store_true", help="check every assignment under the handlers root")
    p.add_argument("--jobs", type=int, default=2, help="samples graded at once (default 2)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (every assignment's result, scores at full precision)")
    p.add_argument("--mutants", action="store_true",
                   help="also grade mutants of the reference solution (`xgrader mutants`): the check fails "
                   "when the mutation score is below --min-score")
    p.add_argument("--min-score", type=float, default=0.8,
                   help="with --mutants: the lowest passing mutation score, 0..1 (default 0.8)")
    add_common(p)
    p.set_defaults(func=run)


def check_mutants(grader, name: str, min_score: float, jobs: int, out=None) -> bool:
    """The mutation score of one assignment's tests against `min_score`
    (the report goes to `out`: stdout, or stderr beside --json)."""
    out = out or sys.stdout
    from xgrader.errors import AssignmentError, InfraError
    from xgrader.mutation import mutants_for
    from xgrader.mutation.run import render, run_mutants

    from xgrader.mutation.run import MUTABLE_KINDS

    assignment = grader.registry.get(name)
    if assignment.config.kind not in MUTABLE_KINDS:
        print(f"  mutants: not for a {assignment.config.kind!r} assignment (pytest and io kinds)", file=out)
        return True
    mutants = mutants_for(assignment.solution)
    if not mutants:
        print(f"  mutants: none (no Python code in {name}/solution/)", file=out)
        return True
    try:
        report = run_mutants(grader, assignment, mutants, jobs=jobs)
    except (AssignmentError, InfraError) as exc:
        print(f"FAIL  {name}: mutants: {exc}", file=out)
        return False
    ok = report.score >= min_score
    print(("PASS" if ok else "FAIL") + f"  {name} mutants (min score {min_score:g}):", file=out)
    print("  " + render(report).replace("\n", "\n  "), file=out, flush=True)
    return ok


def run(args: argparse.Namespace) -> int:
    from xgrader import authoring

    if bool(args.assignment) == bool(args.all) or args.assignment == "--all":
        if args.assignment == "--all":
            args.all, args.assignment = True, None
        else:
            print("xgrader check: give one ASSIGNMENT or --all", file=sys.stderr)
            return 2
    # A failing reference solution is a row of the report, with why.
    _settings, backend, grader = open_grader(args, covered=("reference_solution_fails_tests",))
    try:
        names = grader.registry.names() if args.all else [args.assignment]
        if not names:
            print(f"xgrader check: no assignments under {grader.settings.handlers}", file=sys.stderr)
            return 1
        failed = []
        results = []
        for name in names:
            def progress(done: int, total: int, name: str = name) -> None:
                if sys.stderr.isatty():
                    print(f"\r{name} [{done}/{total}]", end="", file=sys.stderr, flush=True)
            result = authoring.check_assignment(grader, name, jobs=args.jobs, progress=progress)
            if sys.stderr.isatty():
                print("\r\033[K", end="", file=sys.stderr, flush=True)
            if not args.json:
                print(authoring.render_check(result), flush=True)
            results.append(result)
            if not result.ok:
                failed.append(name)
            elif args.mutants and not check_mutants(grader, name, args.min_score, args.jobs,
                                                    sys.stderr if args.json else sys.stdout):
                failed.append(name)
    finally:
        backend.close()
    if args.json:
        print(json.dumps({"ok": not failed, "assignments": [r.model_dump(mode="json") for r in results]},
                         indent=2))
    else:
        print(f"\n{len(names) - len(failed)}/{len(names)} assignments pass"
              + (f"; failing: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
