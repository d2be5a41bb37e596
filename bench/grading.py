"""CPU and latency per submission of the 11-case benchmark exercise, next to
floors measured in the same run.

    python -m bench.grading                    # bwrap backend, every submission in bench/submissions/ x 5
    python -m bench.grading --rounds 10 --profile /tmp/grade.html   # + pyinstrument profile of the xgrader rows

Rows (each grades the same submission mix, correct and wrong novice code):

- ``in-process``: exec the submission in this process and evaluate the 11
  expressions (no isolation at all: the floor of the checks themselves);
- ``python -I per submission``: one fresh interpreter per submission running
  the same checks (the floor of process isolation);
- ``xgrader bwrap``: :class:`xgrader.grading.Grader` on the bwrap backend, a
  fresh sandbox per submission forked by the fork server (docs/sandbox.md),
  expected values computed once beforehand;
- ``xgrader bwrap, no fork server``: the same with one bwrap and one
  interpreter started per submission (``sandbox_fork_server=False``);
- ``xgrader bwrap warm pool``: the same with ``Settings.warm_pool`` (when the
  backend supports it).

CPU is everything the work costs on the machine: this process plus every
descendant. When the cpuacct cgroup controller is writable the benchmark runs
in a cgroup of its own and reads ``cpuacct.usage`` (the sandboxes' job cgroups
nest inside it, so killed sandbox processes are counted too); otherwise it
falls back to ``getrusage(SELF) + getrusage(CHILDREN)``, which misses processes
reaped by someone else (the figure is then marked ``*``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
HANDLERS = REPO / "bench" / "handlers"
SUBMISSIONS = REPO / "bench" / "submissions"
ASSIGNMENT = "median"

# Reference figures of the most used open-source peer (issue 7), per submission.
PEER_CPU_MS = 150.0
PEER_LATENCY_MS = 171.0
TARGET_CPU_MS = 20.0
TARGET_P50_MS = 60.0


# -- CPU accounting ---------------------------------------------------------------

class CpuMeter:
    """CPU seconds used by this process and all its descendants so far."""

    def __init__(self) -> None:
        self.cgroup: Path | None = None
        root = Path("/sys/fs/cgroup/cpuacct")
        if not root.is_dir():  # cgroup v2: cpu.stat of a unified cgroup
            root = Path("/sys/fs/cgroup")
        try:
            own = _own_cgroup(root)
            # Not named xgrader-*: the backends' cleanup_stale() removes those.
            cg = own / f"xgbench-{os.getpid()}"
            cg.mkdir()
            (cg / "cgroup.procs").write_text(str(os.getpid()))
            self.cgroup = cg
        except OSError:
            self.cgroup = None

    @property
    def exact(self) -> bool:
        return self.cgroup is not None

    def seconds(self) -> float:
        if self.cgroup is not None:
            usage = self.cgroup / "cpuacct.usage"
            if usage.exists():
                return int(usage.read_text()) / 1e9
            stat = dict(line.split() for line in (self.cgroup / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) / 1e6
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def close(self) -> None:
        """Move back to the parent cgroup and remove ours."""
        if self.cgroup is None:
            return
        try:
            (self.cgroup.parent / "cgroup.procs").write_text(str(os.getpid()))
            for _ in range(100):
                try:
                    self.cgroup.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)
        except OSError:
            pass
        self.cgroup = None


def _own_cgroup(root: Path) -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        names = controllers.split(",") if controllers else [""]
        if ("cpuacct" in names and root.name == "cpuacct") or (names == [""] and root.name != "cpuacct"):
            return root / path.lstrip("/")
    raise OSError("no cpuacct cgroup")


# -- rows -------------------------------------------------------------------------

@dataclass
class Row:
    name: str
    cpu_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)

    def cpu_per_sub(self) -> float:
        return statistics.mean(self.cpu_ms)

    def p(self, q: float) -> float:
        xs = sorted(self.wall_ms)
        return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure(name: str, subs: list[tuple[str, str]], rounds: int, meter: CpuMeter,
            grade_one: Callable[[str, str], float]) -> Row:
    row = Row(name)
    for _ in range(rounds):
        for sub_name, code in subs:
            c0, t0 = meter.seconds(), time.perf_counter()
            score = grade_one(sub_name, code)
            t1 = time.perf_counter()
            row.wall_ms.append((t1 - t0) * 1000)
            row.cpu_ms.append((meter.seconds() - c0) * 1000)
            row.scores[sub_name] = score
    return row


# -- floors: the same checks without xgrader ------------------------------------------

def load_cases() -> tuple[list[str], list[float], list[Any]]:
    """(expressions, weights, expected values) of the exercise, expected from the solution."""
    import tomllib
    folder = HANDLERS / ASSIGNMENT
    if str(folder / "files") not in sys.path:  # the runtime files (checks.py) beside the code
        sys.path.insert(0, str(folder / "files"))
    cases = tomllib.loads((folder / "tests" / "cases.toml").read_text())["case"]
    exprs = [c["expr"] for c in cases]
    weights = [float(c.get("weight", 1)) for c in cases]
    ns = _module_ns((folder / "solution" / "submission.py").read_text())
    expected = [_eval_case(e, ns) for e in exprs]
    return exprs, weights, expected


def _module_ns(code: str) -> dict[str, Any]:
    ns: dict[str, Any] = {"__name__": "submission"}
    exec(compile(code, "submission.py", "exec"), ns)
    return ns


def _eval_case(expr: str, ns: dict[str, Any]) -> Any:
    try:
        return ("ok", eval(expr, ns))
    except Exception as exc:  # noqa: BLE001 - a student crash is a result
        return ("error", type(exc).__name__)


CHECK_SCRIPT = r"""
import json, sys, io, contextlib
exprs = json.loads(sys.argv[1])
ns = {"__name__": "submission"}
out = []
sys.path.insert(0, sys.argv[2])
with contextlib.redirect_stdout(io.StringIO()):
    try:
        exec(compile(open(sys.argv[3]).read(), "submission.py", "exec"), ns)
        loaded = True
    except BaseException:
        loaded = False
    for e in exprs:
        if not loaded:
            out.append(["error", "load"]); continue
        try:
            out.append(["ok", repr(eval(e, ns))])
        except Exception as exc:
            out.append(["error", type(exc).__name__])
print(json.dumps(out))
"""


def in_process_grader(exprs: list[str], weights: list[float], expected: list[Any]) -> Callable[[str, str], float]:
    import contextlib
    import io

    def grade(_name: str, code: str) -> float:
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                ns = _module_ns(code)
            except BaseException:  # noqa: BLE001
                return 0.0
            got = [_eval_case(e, ns) for e in exprs]
        return sum(w for w, g, x in zip(weights, got, expected) if _same(g, x))
    return grade


def _same(got: Any, want: Any) -> bool:
    return got[0] == want[0] and type(got[1]) is type(want[1]) and got[1] == want[1]


def process_grader(exprs: list[str], weights: list[float], expected: list[Any],
                   python: str) -> Callable[[str, str], float]:
    tmp = Path(tempfile.mkdtemp(prefix="xgbench-"))
    want = [[k, repr(v) if k == "ok" else v] for k, v in expected]
    arg = json.dumps(exprs)

    def grade(_name: str, code: str) -> float:
        path = tmp / "submission.py"
        path.write_text(code)
        try:
            r = subprocess.run([python, "-I", "-c", CHECK_SCRIPT, arg, str(HANDLERS / ASSIGNMENT / "files"), str(path)],
                               capture_output=True, text=True, timeout=10)
            got = json.loads(r.stdout.splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            return 0.0
        return sum(w for w, g, x in zip(weights, got, want) if g == x)
    return grade


# -- xgrader ------------------------------------------------------------------------

@contextmanager
def xgrader_grader(sandbox: str, warm_pool: int, cache: Path,
                   fork_server: bool = True) -> Iterator[Callable[[str, str], float]]:
    from xgrader.config import Settings
    from xgrader.grading import Grader
    from xgrader.handlers.expected import ExpectedStore
    from xgrader.job import GradeRequest
    from xgrader.backends import make_backend

    settings = Settings(handlers=HANDLERS, sandbox=sandbox, warm_pool=warm_pool, sandbox_fork_server=fork_server)
    backend = make_backend(settings, unsafe_ok=sandbox == "unsafe")
    grader = Grader(settings, backend, store=ExpectedStore(cache))
    # Expected values once per assignment (and a warm-up of imports/caches).
    solution = (HANDLERS / ASSIGNMENT / "solution" / "submission.py").read_text()
    grader.grade(GradeRequest(grader=ASSIGNMENT, student_response=solution, submission_id="warmup"))

    def grade(name: str, code: str) -> float:
        report = grader.grade(GradeRequest(grader=ASSIGNMENT, student_response=code, submission_id=name))
        return report.score

    try:
        yield grade
    finally:
        backend.close()


def quiet_logs() -> None:
    import logging

    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


# -- main ----------------------------------------------------------------------------

def table(rows: list[Row], floor_in: Row, floor_proc: Row, exact: bool) -> str:
    mark = "" if exact else "*"
    head = (f"{'row':<28} {'CPU ms/sub':>10} {'p50 ms':>8} {'p95 ms':>8} {'subs/s (1 core)':>15} "
            f"{'x in-proc CPU':>13} {'x python -I CPU':>15} {'peer/this CPU':>13}")
    lines = [head, "-" * len(head)]
    for r in rows:
        cpu = r.cpu_per_sub()
        lines.append(
            f"{r.name:<28} {cpu:>9.2f}{mark} {r.p(0.5):>8.1f} {r.p(0.95):>8.1f} {1000 / max(cpu, 1e-6):>15.0f} "
            f"{cpu / max(floor_in.cpu_per_sub(), 1e-6):>13.1f} {cpu / max(floor_proc.cpu_per_sub(), 1e-6):>15.2f} "
            f"{PEER_CPU_MS / max(cpu, 1e-6):>13.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="times each submission is graded per row (default 5)")
    ap.add_argument("--sandbox", default="bwrap", help="backend of the xgrader rows (default bwrap)")
    ap.add_argument("--warm-pool", type=int, default=2, help="size of the warm-pool row's pool; 0 skips the row")
    ap.add_argument("--profile", type=Path, help="write a pyinstrument HTML profile of the xgrader row here")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    quiet_logs()

    subs = [(p.stem, p.read_text()) for p in sorted(SUBMISSIONS.glob("*.py"))]
    exprs, weights, expected = load_cases()
    meter = CpuMeter()
    exact = meter.exact
    cache = Path(tempfile.mkdtemp(prefix="xgbench-expected-"))
    try:
        from xgrader.config import Settings
        python = str(Settings().sandbox_python)
        floor_in = measure("in-process checks", subs, args.rounds, meter, in_process_grader(exprs, weights, expected))
        floor_proc = measure("python -I per submission", subs, args.rounds, meter,
                             process_grader(exprs, weights, expected, python))
        rows = [floor_in, floor_proc]
        with xgrader_grader(args.sandbox, 0, cache) as grade:
            if args.profile:
                from pyinstrument import Profiler
                profiler = Profiler(interval=0.0005)
                profiler.start()
            rows.append(measure(f"xgrader {args.sandbox}", subs, args.rounds, meter, grade))
            if args.profile:
                profiler.stop()
                args.profile.write_text(profiler.output_html())
                print(profiler.output_text(unicode=False, color=False, show_all=False)[:6000])
        if args.sandbox == "bwrap":  # the same without the fork servers: bwrap + python per job
            with xgrader_grader(args.sandbox, 0, cache, fork_server=False) as grade:
                rows.append(measure("xgrader bwrap, no fork server", subs, args.rounds, meter, grade))
        if args.warm_pool:
            try:
                with xgrader_grader(args.sandbox, args.warm_pool, cache) as grade:
                    rows.append(measure(f"xgrader {args.sandbox} warm pool {args.warm_pool}", subs, args.rounds,
                                        meter, grade))
            except Exception as exc:  # noqa: BLE001 - the warm pool is optional
                print(f"(warm pool row skipped: {exc})", file=sys.stderr)
    finally:
        meter.close()

    print(f"{len(subs)} submissions x {args.rounds} rounds, 11 expression cases each, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(table(rows, floor_in, floor_proc, exact))
    xg = rows[2]
    print(f"\ntarget CPU <= {TARGET_CPU_MS:g} ms/sub: {'MET' if xg.cpu_per_sub() <= TARGET_CPU_MS else 'MISSED'} "
          f"({xg.cpu_per_sub():.1f} ms, {PEER_CPU_MS / xg.cpu_per_sub():.1f}x less than the peer's {PEER_CPU_MS:g} ms)")
    print(f"grade latency p50 {xg.p(0.5):.1f} ms (target pull-to-post p50 <= {TARGET_P50_MS:g} ms; "
          f"bench/throughput.py measures it through the queue), p95 {xg.p(0.95):.1f} ms")
    mismatched = [n for n, s in xg.scores.items() if floor_in.scores.get(n) != s]
    if mismatched:
        print(f"note: scores differ from the in-process floor for {mismatched} "
              "(the floor checks the top-level type and ==; xgrader checks types all the way down, "
              "so (2.0, [..]) is not (2, [..]))")
    if args.json:
        args.json.write_text(json.dumps({r.name: {"cpu_ms": r.cpu_per_sub(), "p50_ms": r.p(0.5),
                                                  "p95_ms": r.p(0.95), "scores": r.scores} for r in rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
