"""Mutation testing speed: `xgrader mutants is_prime` end to end (mutants
generated, the reference graded, every mutant graded in the bwrap sandbox
through the fork servers, 2 at once), against a baseline measured in the
same run: the same number of gradings of the reference solution itself
(what grading that many submissions costs, with nothing hanging).

    python -m bench.mutants [--rounds 3] [--jobs 2]

Target: is_prime in at most 30 s on 2 cores. Prints the wall time, the
mutants per second, the ratio to the baseline, and the load average (other
work on the machine slows it: say so with a figure).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from xgrader.authoring import grade_many
from xgrader.config import DEFAULT_HANDLERS, Settings
from xgrader.grading import Grader
from xgrader.job import GradeRequest
from xgrader.mutation import mutants_for
from xgrader.mutation.run import MutantStatus, run_mutants
from xgrader.backends import make_backend

TARGET_S = 30.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assignment", default="is_prime")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    from types import SimpleNamespace

    from xgrader import logs
    logs.configure(SimpleNamespace(log_format="console", log_level="warning"))
    settings = Settings(handlers=DEFAULT_HANDLERS, sandbox="bwrap")
    backend = make_backend(settings)
    try:
        grader = Grader(settings, backend)
        assignment = grader.registry.get(args.assignment)
        runs, bases = [], []
        for r in range(args.rounds):
            started = time.monotonic()
            mutants = mutants_for(assignment.solution)
            report = run_mutants(grader, assignment, mutants, jobs=args.jobs)
            runs.append(time.monotonic() - started)
            counts = {s.value: report.count(s) for s in MutantStatus}
            started = time.monotonic()
            items = [(f"ref{i}", GradeRequest(grader=args.assignment, files=dict(assignment.solution),
                                              submission_id=f"bench-ref-{i}")) for i in range(len(mutants) + 1)]
            grade_many(grader, items, jobs=args.jobs)
            bases.append(time.monotonic() - started)
            print(f"round {r + 1}: {len(mutants)} mutants in {runs[-1]:.1f}s (score {report.score:.2f}, {counts}); "
                  f"baseline {len(items)} reference gradings {bases[-1]:.1f}s; load {os.getloadavg()[0]:.1f}",
                  flush=True)
        med, base = statistics.median(runs), statistics.median(bases)
        print(f"\nmutants {args.assignment}: median {med:.1f}s (min {min(runs):.1f}, max {max(runs):.1f}) for "
              f"{len(mutants)} mutants = {len(mutants) / med:.1f} mutants/s; {med / base:.2f}x the baseline "
              f"({base:.1f}s for as many reference gradings); target <= {TARGET_S:.0f}s: "
              f"{'met' if med <= TARGET_S else 'NOT met'}; {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f} (others' work included)")
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
