"""CPU per submission of the built-in explanations: the corpus of wrong
submissions (tests/corpus) graded with every test hidden, explanations on
(the default) and off (`[feedback] explain = false`), side by side.

    python -m bench.explain                  # 6 rounds, alternating on/off
    python -m bench.explain --rounds 10 --assignments sum_digits word_freq

Each round grades the same submission mix once with explanations on and
once off, in alternating order (on/off, off/on, ...), so a machine whose
load changes during the run shifts both sides alike. CPU is everything the
grading costs on the machine: on bwrap this process (`host`, where the
source analysis and the explanations are built) plus every sandbox's own
CPU from its job cgroup (`sandboxes`: the runner's share, error frames,
stack samples, argument snapshots); with `--sandbox unsafe` every
descendant process through bench.grading.CpuMeter. Submissions that run into a time
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


class _Box:
    """A RunningSandbox that adds its job's CPU (cgroup accounting) to a tally once."""

    def __init__(self, box, tally: list[float]) -> None:
        self._box, self._tally, self._counted = box, tally, False

    def __getattr__(self, name):
        return getattr(self._box, name)

    def wait(self, timeout=None):
        result = self._box.wait(timeout)
        if not self._counted and result.cpu_s is not None:
            self._counted = True
            self._tally[0] += result.cpu_s
        return result

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._box.kill()


class CountingBackend:
    """The backend, with every sandbox's own CPU time summed: the fork
    server's jobs are not this process's children, their cgroups are."""

    def __init__(self, backend) -> None:
        self._backend = backend
        self.tally = [0.0]

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def start(self, job):
        return _Box(self._backend.start(job), self.tally)

    def run(self, job):
        with self.start(job) as box:
            return box.wait()


def explain_off(assignment):
    """The assignment with every built-in explanation switched off."""
    from xgrader.assignment import Assignment

    fb = assignment.config.feedback.model_copy(update={"explain": False})
    fields = {name: getattr(assignment, name) for name in Assignment.model_fields}
    fields["config"] = assignment.config.model_copy(update={"feedback": fb})
    return Assignment(**fields)


def runner_micro(n: int = 20_000) -> None:
    """The runner's own share, in this process, per request: the same call
    and the same expression with and without what the explanations ask for
    (a stack-sample timer, argument snapshots), and an error's frames."""
    sys.path.insert(0, str(REPO / "sandbox"))
    try:
        import runner_core as rc
    finally:
        sys.path.remove(str(REPO / "sandbox"))

    class Null:
        def send(self, msg):
            pass

    runner = rc.Runner(Null())
    module = type(sys)("submission")
    exec("def count_words(ws):\n    c = {}\n    for w in ws:\n        c[w] = c.get(w, 0) + 1\n    return c\n"
         "def bad(n):\n    return n / 0\n", module.__dict__)
    runner.module = module
    words = ["the", "cat", "and", "the", "hat"] * 4

    def per_request(req: dict) -> float:
        started = time.process_time()
        for _ in range(n):
            runner.handle(dict(req))
        return (time.process_time() - started) * 1e6 / n

    call = {"op": "call", "id": 1, "target": "count_words", "args": [words], "kwargs": {}}
    expr = {"op": "eval", "id": 1, "expr": "count_words(%r)" % (words,)}
    rows = [
        ("call", per_request(call), per_request({**call, "watch": True, "sample_after": 1.5})),
        ("expression", per_request(expr),
         per_request({**expr, "expr": "__xgrader_call__(count_words, %r)" % (words,), "sample_after": 1.5})),
    ]
    err = {"op": "call", "id": 1, "target": "bad", "args": [3], "kwargs": {}}
    plain_describe = rc.describe

    def no_locations(exc, handles=None):
        saved, rc._locations = rc._locations, lambda e: {}
        try:
            return plain_describe(exc, handles)
        finally:
            rc._locations = saved
    rc.describe = no_locations
    without = per_request(err)
    rc.describe = plain_describe
    rows.append(("error", without, per_request({**err, "sample_after": 1.5})))
    for name, off, on in rows:
        print(f"runner, {name}: {off:.1f} us plain, {on:.1f} us with explanations' evidence ({on - off:+.1f} us)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--assignments", nargs="*", default=DEFAULT)
    p.add_argument("--micro", action="store_true", help="only the runner's share, in this process, per request")
    p.add_argument("--sandbox", choices=["bwrap", "unsafe"], default="bwrap",
                   help="unsafe: sandboxes are plain child processes, so the runner's own share of the work "
                   "(error frames, stack samples, argument snapshots) is in the CPU figure too")
    args = p.parse_args(argv)
    if args.micro:
        runner_micro()
        return 0

    from xgrader import authoring, logs
    from xgrader.backends import make_backend
    from xgrader.config import Settings
    from xgrader.grading import Grader
    from xgrader.handlers.expected import ExpectedStore
    from types import SimpleNamespace

    logs.configure(SimpleNamespace(log_format="console", log_level="error"))
    settings = Settings(handlers=REPO / "payload_handlers", sandbox=args.sandbox)
    backend = make_backend(settings, unsafe_ok=args.sandbox == "unsafe")
    counting = CountingBackend(backend)
    grader = Grader(settings, counting, store=ExpectedStore(Path(tempfile.mkdtemp(prefix="xg-bench-"))))
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
        per: dict[str, list[float]] = {"on": [], "off": []}
        host: dict[str, list[float]] = {"on": [], "off": []}
        jobs: dict[str, list[float]] = {"on": [], "off": []}
        for i in range(args.rounds):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            figures = {}
            for mode in order:
                c0, h0, j0 = meter.seconds(), time.process_time(), counting.tally[0]
                for name, _sub, request in keep:
                    grader.grade(request, variants[name][mode])
                own = (time.process_time() - h0) * 1000 / len(keep)
                box = (counting.tally[0] - j0) * 1000 / len(keep)
                # bwrap: this process + every job's cgroup; unsafe: the meter already counts the children.
                cpu = own + box if args.sandbox == "bwrap" else (meter.seconds() - c0) * 1000 / len(keep)
                per[mode].append(cpu)
                host[mode].append(own)
                jobs[mode].append(box)
                figures[mode] = (cpu, own, box)
            print(f"round {i + 1} ({'/'.join(order)}): on {figures['on'][0]:.2f} ms, off {figures['off'][0]:.2f} ms "
                  f"per submission (host {figures['on'][1]:.2f} / {figures['off'][1]:.2f}, sandboxes "
                  f"{figures['on'][2]:.2f} / {figures['off'][2]:.2f}); "
                  f"difference {figures['on'][0] - figures['off'][0]:+.2f} ms; load {os.getloadavg()[0]:.1f}")

        def paired(xs: dict[str, list[float]]) -> float:
            return statistics.median(a - b for a, b in zip(xs["on"], xs["off"]))
        med_on, med_off = statistics.median(per["on"]), statistics.median(per["off"])
        print(f"median CPU per submission: on {med_on:.2f} ms, off {med_off:.2f} ms, ratio {med_on / med_off:.3f}; "
              f"median paired difference {paired(per):+.2f} ms (host {paired(host):+.2f} ms, sandboxes "
              f"{paired(jobs):+.2f} ms); target <= {TARGET_MS:g} ms")
        return 0
    finally:
        meter.close()
        backend.close()


if __name__ == "__main__":
    sys.exit(main())
