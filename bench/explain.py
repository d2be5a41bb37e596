"""CPU per submission of the built-in explanations: the corpus of wrong
submissions (tests/corpus) graded with every test hidden, explanations on
(the default) and off (`[feedback] explain = false`), side by side.

    python -m bench.explain                  # 6 rounds, alternating on/off
    python -m bench.explain --rounds 10 --assignments sum_digits word_freq

Each round grades the same submission mix once with explanations on and
once off, in alternating order (on/off, off/on, ...), so a machine whose
load changes during the run shifts both sides alike. CPU is everything the
grading costs on the machine (this process and its children: see
bench.grading.CpuMeter; on bwrap the fork server's sandboxes are not this
process's children, so `--sandbox unsafe` is the run that also counts the
runner's share); `host` is this process alone, where the source analysis
and the explanations are built. Submissions that run into a time
or memory limit are left out (seconds of spinning would drown a 2 ms
difference). Prints per-round figures and the medians; the target is at
most 2 ms of CPU per submission added by the explanations.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.grading import CpuMeter

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "corpus"
TARGET_MS = 2.0
DEFAULT = ["sum_digits", "word_freq", "is_prime", "grade_stats", "temperature_notebook"]


def explain_off(assignment):
    """The assignment with every built-in explanation switched off."""
    from xgrader.assignment import Assignment

    fb = assignment.config.feedback.model_copy(update={"explain": False})
    fields = {name: getattr(assignment, name) for name in Assignment.model_fields}
    fields["config"] = assignment.config.model_copy(update={"feedback": fb})
    return Assignment(**fields)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--assignments", nargs="*", default=DEFAULT)
    p.add_argument("--sandbox", choices=["bwrap", "unsafe"], default="bwrap",
                   help="unsafe: sandboxes are plain child processes, so the runner's own share of the work "
                   "(error frames, stack samples, argument snapshots) is in the CPU figure too")
    args = p.parse_args(argv)

    from xgrader import authoring, logs
    from xgrader.backends import make_backend
    from xgrader.config import Settings
    from xgrader.grading import Grader
    from xgrader.handlers.expected import ExpectedStore
    from types import SimpleNamespace

    logs.configure(SimpleNamespace(log_format="console", log_level="error"))
    settings = Settings(handlers=REPO / "payload_handlers", sandbox=args.sandbox)
    backend = make_backend(settings, unsafe_ok=args.sandbox == "unsafe")
    grader = Grader(settings, backend, store=ExpectedStore(Path(tempfile.mkdtemp(prefix="xg-bench-"))))
    meter = CpuMeter()
    try:
        variants = {}
        items = []
        for name in args.assignments:
            on = grader.registry.get(name).all_hidden()
            variants[name] = {"on": on, "off": explain_off(on)}
            for mode in ("on", "off"):
                authoring.warm(grader, variants[name][mode])
            for path in authoring.submission_paths(CORPUS / name):
                items.append((name, path.name, authoring.request_for([path], name, submission_id=path.name)))
        # Warm-up pass (both modes): drops submissions that hit a limit, fills caches.
        keep = []
        for name, sub, request in items:
            reports = [grader.grade(request, variants[name][m]) for m in ("on", "off")]
            if not any(r.outcome.value in ("time_limit", "memory_limit", "output_limit") for r in reports):
                keep.append((name, sub, request))
        print(f"{args.sandbox}: {len(keep)} of {len(items)} corpus submissions ({', '.join(args.assignments)}); "
              f"CPU {'exact (cgroup)' if meter.exact else 'approximate (rusage)*'}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the start")
        per = {"on": [], "off": []}
        host = {"on": [], "off": []}
        for i in range(args.rounds):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            figures = {}
            for mode in order:
                c0, h0 = meter.seconds(), time.process_time()
                for name, _sub, request in keep:
                    grader.grade(request, variants[name][mode])
                cpu = (meter.seconds() - c0) * 1000 / len(keep)
                own = (time.process_time() - h0) * 1000 / len(keep)
                per[mode].append(cpu)
                host[mode].append(own)
                figures[mode] = (cpu, own)
            print(f"round {i + 1} ({'/'.join(order)}): on {figures['on'][0]:.2f} ms, off {figures['off'][0]:.2f} ms "
                  f"per submission (host {figures['on'][1]:.2f} / {figures['off'][1]:.2f} ms); "
                  f"difference {figures['on'][0] - figures['off'][0]:+.2f} ms; "
                  f"load {os.getloadavg()[0]:.1f}")
        diffs = [a - b for a, b in zip(per["on"], per["off"])]
        host_diffs = [a - b for a, b in zip(host["on"], host["off"])]
        med_on, med_off = statistics.median(per["on"]), statistics.median(per["off"])
        print(f"median CPU per submission: on {med_on:.2f} ms, off {med_off:.2f} ms, ratio {med_on / med_off:.3f}; "
              f"median paired difference {statistics.median(diffs):+.2f} ms "
              f"(host side {statistics.median(host_diffs):+.2f} ms); target <= {TARGET_MS:g} ms")
        return 0
    finally:
        meter.close()
        backend.close()


if __name__ == "__main__":
    sys.exit(main())
