"""CPU and latency per submission of both handler kinds, side by side, next
to floors and the cold path measured in the same run.

    python -m bench.grading                    # bwrap backend, both kinds, every submission x 5
    python -m bench.grading --kinds pytest --rounds 10 --profile /tmp/grade.html   # + pyinstrument profile
    python -m bench.grading --docker 0         # without the docker rows

The two exercises:

- ``io``: bench/handlers/median (11 expression cases), the 19 novice
  submissions of bench/submissions/;
- ``pytest``: payload_handlers/is_prime (17 pytest tests, 14 of them hidden),
  its 6 samples (correct, wrong in four ways, a syntax error).

Rows, per kind (each grades the same submission mix):

- floors: ``in-process`` (io: exec the submission here and evaluate the
  expressions; no isolation at all) and one fresh interpreter per submission
  (io: ``python -I`` running the same checks; pytest: ``python3 -m pytest``
  on the tests with the submission beside them, no sandbox: what a grader
  without isolation pays);
- ``xgrader bwrap``: :class:`xgrader.grading.Grader` on the bwrap backend, a
  fresh sandbox per submission forked by the fork servers (docs/sandbox.md),
  the reference run done beforehand;
- ``xgrader bwrap, cold``: the same with one bwrap and one interpreter
  started per sandbox (``sandbox_fork_server=False``): the baseline;
- ``xgrader bwrap warm pool N``: the same with ``Settings.warm_pool``.

Docker (``--docker N``, when an engine answers): the backend's per-job
overhead (a trivial batch job against a bare ``python3 -I -c pass``,
interleaved) and each kind graded on it (latency only: the containers' CPU is
the engine's, outside this process tree).

CPU is everything the work costs on the machine: this process plus every
descendant. When the cpuacct cgroup controller is writable the benchmark runs
in a cgroup of its own and reads ``cpuacct.usage`` (the sandboxes' job cgroups
and the fork servers' nest inside it, so killed sandbox processes count too);
otherwise it falls back to ``getrusage(SELF) + getrusage(CHILDREN)``, which
misses processes reaped by someone else (the figure is then marked ``*``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
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
PYTEST_HANDLERS = REPO / "payload_handlers"
PYTEST_ASSIGNMENT = "is_prime"

# The CPU per submission measured for a widely used open-source grader.
PEER_CPU_MS = 150.0
PEER_LATENCY_MS = 171.0
# Targets per kind: CPU per submission (bwrap, fresh sandboxes, whole tree).
TARGET_CPU_MS = {"io": 20.0, "pytest": 30.0}
TARGET_P50_MS = 60.0
DOCKER_URL = "unix:///run/xgrader-podman.sock"
TARGET_DOCKER_MS = 250.0


@dataclass(frozen=True)
class Exercise:
    kind: str
    handlers: Path
    assignment: str
    submissions: tuple[tuple[str, str], ...]

    @property
    def solution(self) -> str:
        return (self.handlers / self.assignment / "solution" / "submission.py").read_text()


def exercises() -> dict[str, Exercise]:
    def subs(folder: Path) -> tuple[tuple[str, str], ...]:
        return tuple((p.stem, p.read_text()) for p in sorted(folder.glob("*.py")))
    return {
        "io": Exercise("io", HANDLERS, ASSIGNMENT, subs(SUBMISSIONS)),
        "pytest": Exercise("pytest", PYTEST_HANDLERS, PYTEST_ASSIGNMENT,
                           subs(PYTEST_HANDLERS / PYTEST_ASSIGNMENT / "samples")),
    }


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
        return statistics.mean(self.cpu_ms) if self.cpu_ms else float("nan")

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


def pytest_process_grader(ex: Exercise, python: str) -> Callable[[str, str], float]:
    """`python3 -m pytest` on the exercise's tests with the submission beside
    them, in a fresh interpreter per submission and no sandbox; the score is
    the number of passed tests."""
    tmp = Path(tempfile.mkdtemp(prefix="xgbench-pytest-"))
    folder = ex.handlers / ex.assignment
    dirs = [d for d in ("tests", "public_tests") if (folder / d).is_dir()]
    for d in dirs:
        shutil.copytree(folder / d, tmp / d)

    def grade(_name: str, code: str) -> float:
        (tmp / "submission.py").write_text(code)
        # `-m` puts the cwd (the submission's folder) on sys.path.
        r = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp), *dirs],
                           cwd=tmp, capture_output=True, text=True, timeout=60)
        found = re.search(r"(\d+) passed", r.stdout)
        return float(found.group(1)) if found else 0.0
    return grade


# -- xgrader ------------------------------------------------------------------------

@contextmanager
def xgrader_grader(ex: Exercise, sandbox: str, warm_pool: int, cache: Path, fork_server: bool = True,
                   docker_url: str | None = None) -> Iterator[Callable[[str, str], float]]:
    from xgrader.config import Settings
    from xgrader.grading import Grader
    from xgrader.handlers.expected import ExpectedStore
    from xgrader.job import GradeRequest
    from xgrader.backends import make_backend

    extra = {"docker_url": docker_url} if docker_url else {}
    settings = Settings(handlers=ex.handlers, sandbox=sandbox, warm_pool=warm_pool,
                        sandbox_fork_server=fork_server, **extra)
    backend = make_backend(settings, unsafe_ok=sandbox == "unsafe")
    grader = Grader(settings, backend, store=ExpectedStore(cache))
    # The reference run once per assignment (and a warm-up of imports/caches).
    grader.grade(GradeRequest(grader=ex.assignment, student_response=ex.solution, submission_id="warmup"))

    def grade(name: str, code: str) -> float:
        report = grader.grade(GradeRequest(grader=ex.assignment, student_response=code, submission_id=name))
        return report.score

    try:
        yield grade
    finally:
        backend.close()


def docker_overhead(n: int, url: str) -> dict[str, float]:
    """Wall ms of a trivial batch job on the docker backend against a bare
    `python3 -I -c pass`, interleaved (medians and the backend's p90)."""
    from xgrader.config import Settings
    from xgrader.backends.base import SandboxJob, Verdict
    from xgrader.backends.docker_backend import DockerBackend

    settings = Settings(sandbox="docker", docker_url=url)
    backend = DockerBackend(settings)
    try:
        backend.check()
        job = SandboxJob(argv=["python3", "-I", "-c", "pass"])
        backend.run(job)  # the first job pays for the engine info call
        bare, docker = [], []
        for _ in range(n):
            t = time.perf_counter()
            subprocess.run([str(settings.sandbox_python), "-I", "-c", "pass"], check=True)
            bare.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            result = backend.run(job)
            docker.append((time.perf_counter() - t) * 1000)
            assert result.verdict is Verdict.ok, result
    finally:
        backend.close()
    return {"bare_ms": statistics.median(bare), "docker_ms": statistics.median(docker),
            "docker_p90_ms": sorted(docker)[int(0.9 * (len(docker) - 1))]}


def quiet_logs() -> None:
    import logging

    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


# -- main ----------------------------------------------------------------------------

def table(rows: list[tuple[str, Row]], floors: dict[str, Row], exact: bool) -> str:
    """One line per (kind, row): CPU and latency, and ratios to that kind's
    floors, its cold row and the peer's CPU per submission."""
    mark = "" if exact else "*"
    head = (f"{'kind':<7} {'row':<30} {'CPU ms/sub':>10} {'p50 ms':>8} {'p95 ms':>8} {'x floor':>8} "
            f"{'x cold':>7} {'peer/this':>9}")
    lines = [head, "-" * len(head)]
    for kind, r in rows:
        cpu = r.cpu_per_sub()
        floor = floors.get(kind)
        cold = next((c for k, c in rows if k == kind and c.name.endswith(", cold")), None)
        ratio = f"{cpu / max(floor.cpu_per_sub(), 1e-6):>8.2f}" if floor and r.cpu_ms else f"{'-':>8}"
        vs_cold = f"{cpu / max(cold.cpu_per_sub(), 1e-6):>7.2f}" if cold and r.cpu_ms else f"{'-':>7}"
        cpu_s = f"{cpu:>9.1f}{mark}" if r.cpu_ms else f"{'-':>10}"
        lines.append(f"{kind:<7} {r.name:<30} {cpu_s} {r.p(0.5):>8.1f} {r.p(0.95):>8.1f} {ratio} {vs_cold} "
                     f"{(PEER_CPU_MS / max(cpu, 1e-6) if r.cpu_ms else 0):>9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="times each submission is graded per row (default 5)")
    ap.add_argument("--kinds", default="io,pytest", help="comma-separated kinds to measure (default io,pytest)")
    ap.add_argument("--sandbox", default="bwrap", help="backend of the xgrader rows (default bwrap)")
    ap.add_argument("--warm-pool", type=int, default=2, help="size of the warm-pool row's pool; 0 skips the row")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold (no fork server) rows")
    ap.add_argument("--docker", type=int, default=10, metavar="N",
                    help="docker samples per figure (default 10; 0 skips the docker rows)")
    ap.add_argument("--docker-url", default=DOCKER_URL, help=f"the engine's API (default {DOCKER_URL})")
    ap.add_argument("--profile", type=Path, help="write a pyinstrument HTML profile of the xgrader rows here")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    quiet_logs()

    wanted = [k.strip() for k in args.kinds.split(",") if k.strip()]
    all_ex = exercises()
    unknown = [k for k in wanted if k not in all_ex]
    if unknown:
        ap.error(f"unknown kind(s) {unknown}; known: {sorted(all_ex)}")
    load_start = os.getloadavg()[0]
    meter = CpuMeter()
    exact = meter.exact
    cache = Path(tempfile.mkdtemp(prefix="xgbench-expected-"))
    rows: list[tuple[str, Row]] = []
    floors: dict[str, Row] = {}
    docker: dict[str, float] = {}
    profiler = None
    try:
        from xgrader.config import Settings
        python = str(Settings().sandbox_python)
        for kind in wanted:
            ex = all_ex[kind]
            subs = list(ex.submissions)
            if kind == "io":
                exprs, weights, expected = load_cases()
                rows.append((kind, measure("in-process checks", subs, args.rounds, meter,
                                           in_process_grader(exprs, weights, expected))))
                floor = measure("python -I per submission", subs, args.rounds, meter,
                                process_grader(exprs, weights, expected, python))
            else:
                floor = measure("python3 -m pytest per submission", subs, args.rounds, meter,
                                pytest_process_grader(ex, python))
            rows.append((kind, floor))
            floors[kind] = floor
            with xgrader_grader(ex, args.sandbox, 0, cache) as grade:
                if args.profile and profiler is None:
                    from pyinstrument import Profiler
                    profiler = Profiler(interval=0.0005)
                    profiler.start()
                rows.append((kind, measure(f"xgrader {args.sandbox}", subs, args.rounds, meter, grade)))
                if profiler is not None and profiler.is_running:
                    profiler.stop()
            if args.sandbox == "bwrap" and not args.no_cold:  # bwrap + python per sandbox
                with xgrader_grader(ex, args.sandbox, 0, cache, fork_server=False) as grade:
                    rows.append((kind, measure("xgrader bwrap, cold", subs, args.rounds, meter, grade)))
            if args.warm_pool:
                try:
                    with xgrader_grader(ex, args.sandbox, args.warm_pool, cache) as grade:
                        rows.append((kind, measure(f"xgrader {args.sandbox} warm pool {args.warm_pool}", subs,
                                                   args.rounds, meter, grade)))
                except Exception as exc:  # noqa: BLE001 - the warm pool is optional
                    print(f"(warm pool row skipped: {exc})", file=sys.stderr)
        if args.docker:
            try:
                docker = docker_overhead(args.docker, args.docker_url)
                for kind in wanted:
                    ex = all_ex[kind]
                    with xgrader_grader(ex, "docker", 0, cache, docker_url=args.docker_url) as grade:
                        row = measure("xgrader docker", list(ex.submissions)[:args.docker], 1, meter, grade)
                    row.cpu_ms = []  # the containers' CPU is the engine's: latency only
                    rows.append((kind, row))
            except Exception as exc:  # noqa: BLE001 - no engine here: said, not fatal
                print(f"(docker rows skipped: {type(exc).__name__}: {exc})", file=sys.stderr)
    finally:
        meter.close()

    if profiler is not None:
        args.profile.write_text(profiler.output_html())
        print(profiler.output_text(unicode=False, color=False, show_all=False)[:6000])
    print(f"submissions x {args.rounds} rounds: " + ", ".join(
        f"{k} {len(all_ex[k].submissions)} ({all_ex[k].handlers.name}/{all_ex[k].assignment})" for k in wanted)
        + f"; load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
          f"{os.cpu_count()} cores")
    print(table(rows, floors, exact))
    print()
    for kind in wanted:
        xg = next((r for k, r in rows if k == kind and r.name == f"xgrader {args.sandbox}"), None)
        if xg is None:
            continue
        target = TARGET_CPU_MS[kind]
        cpu = xg.cpu_per_sub()
        print(f"{kind}: CPU <= {target:g} ms/sub: {'MET' if cpu <= target else 'MISSED'} ({cpu:.1f} ms; "
              f"{PEER_CPU_MS / cpu:.1f}x less than the peer's {PEER_CPU_MS:g} ms); grade latency p50 "
              f"{xg.p(0.5):.1f} ms, p95 {xg.p(0.95):.1f} ms (pull-to-post: bench/throughput.py)")
        base = next((r for k, r in rows if k == kind and r.name.startswith("in-process")), None)
        mismatched = [n for n, s in xg.scores.items() if base is not None and base.scores.get(n) != s]
        if mismatched:
            print(f"  note: scores differ from the in-process floor for {mismatched} "
                  "(the floor checks the top-level type and ==; xgrader checks types all the way down)")
    if docker:
        over = docker["docker_ms"] - docker["bare_ms"]
        print(f"docker per-job overhead: {over:+.1f} ms over a bare python3 -I -c pass "
              f"({docker['docker_ms']:.1f} against {docker['bare_ms']:.1f} ms, p90 {docker['docker_p90_ms']:.1f} ms; "
              f"target <= {TARGET_DOCKER_MS:g} ms)")
    if args.json:
        args.json.write_text(json.dumps({
            "rows": [{"kind": k, "row": r.name, "cpu_ms": r.cpu_per_sub() if r.cpu_ms else None,
                      "p50_ms": r.p(0.5), "p95_ms": r.p(0.95), "scores": r.scores} for k, r in rows],
            "docker": docker, "load": [load_start, os.getloadavg()[0]]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
