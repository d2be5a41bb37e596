"""Interleaved A/B of the sandbox side of the bwrap fork servers: the same host
code, two runner folders (e.g. a checkout of sandbox/ before a change and the
current one), blocks of jobs alternated so a busy machine's drift hits both.

    python -m bench.forkserver_ab OLD_SANDBOX_DIR [NEW_SANDBOX_DIR] [--mode exec|grade] [--rounds N]

Per job it prints the CPU of the job's cgroup (its init and the job, from the
moment init joins), of the servers' cgroups (the forks, the server's own
copy-on-write faults, the init before it joins) and of this process (the
host side), medians over the blocks with their ranges. `exec` runs the
runner on an empty program; `grade` grades the benchmark exercise's 19
submissions (bench/grading.py). Needs root and writable cgroups, like the
other benchmarks. Kernel work outside any cgroup (a network namespace's
teardown in a kworker) is not counted."""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
from pathlib import Path

from bench.grading import ASSIGNMENT, HANDLERS, SUBMISSIONS, CpuMeter, quiet_logs
from xgrader.config import DEFAULT_RUNNER_DIR


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path, help="runner folder A (a copy of sandbox/)")
    ap.add_argument("new", type=Path, nargs="?", default=DEFAULT_RUNNER_DIR, help="runner folder B (default: sandbox/)")
    ap.add_argument("--mode", choices=("exec", "grade"), default="exec")
    ap.add_argument("--rounds", type=int, default=10, help="blocks of 19 jobs per folder (default 10)")
    args = ap.parse_args(argv)
    quiet_logs()
    meter = CpuMeter()

    from xgrader.config import Settings
    from xgrader.grading import Grader
    from xgrader.handlers.expected import ExpectedStore
    from xgrader.job import GradeRequest
    from xgrader.backends import cgroups as cgm
    from xgrader.backends import make_backend
    from xgrader.backends.base import SandboxJob, Verdict

    current = [""]
    job_cpu: dict[str, float] = {}
    finish = cgm.JobCgroup.finish

    def counted_finish(self):  # every job's accounting, read before its cgroup goes
        stats = finish(self)
        job_cpu[current[0]] = job_cpu.get(current[0], 0.0) + (stats.get("cpu_s") or 0.0)
        return stats

    cgm.JobCgroup.finish = counted_finish
    subs = [(p.stem, p.read_text()) for p in sorted(SUBMISSIONS.glob("*.py"))]
    solution = (HANDLERS / ASSIGNMENT / "solution" / "submission.py").read_text()
    names = {"A": args.old.resolve(), "B": args.new.resolve()}
    variants = {}
    for key, folder in names.items():
        settings = Settings(handlers=HANDLERS, sandbox="bwrap", warm_pool=0, runner_dir=folder)
        backend = make_backend(settings)
        backend.prepare()
        current[0] = key
        if args.mode == "grade":
            grader = Grader(settings, backend, store=ExpectedStore(Path(tempfile.mkdtemp(prefix="xgbench-"))))
            grader.grade(GradeRequest(grader=ASSIGNMENT, student_response=solution, submission_id="warmup"))
            work = [lambda n=n, c=c, g=grader: g.grade(GradeRequest(grader=ASSIGNMENT, student_response=c,
                                                                      submission_id=n)) for n, c in subs]
        else:
            job = SandboxJob(argv=backend.python_argv("exec", "m.py"), files={"m.py": b"pass\n"}, label="bench")

            def one(backend=backend, job=job) -> None:
                sandbox = backend.start(job)
                result = sandbox.wait()
                assert result.verdict is Verdict.ok, result

            work = [one] * len(subs)
        for w in work[:5]:  # warm-up
            w()
        variants[key] = (backend, work)

    def server_cpu(backend) -> float:
        total = 0
        for server in backend.forkservers.servers.values():
            if server.cgroup is not None and "cpuacct" in server.cgroup.dirs:
                total += int((server.cgroup.dirs["cpuacct"] / "cpuacct.usage").read_text())
        return total / 1e9

    def own_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    rows: dict[str, list[tuple[float, float, float]]] = {"A": [], "B": []}
    try:
        for r in range(args.rounds):
            for key in ("A", "B") if r % 2 == 0 else ("B", "A"):
                backend, work = variants[key]
                current[0] = key
                j0, z0, h0 = job_cpu.get(key, 0.0), server_cpu(backend), own_cpu()
                for w in work:
                    w()
                n = len(work)
                rows[key].append(((job_cpu[key] - j0) * 1000 / n, (server_cpu(backend) - z0) * 1000 / n,
                                  (own_cpu() - h0) * 1000 / n))
    finally:
        for backend, _ in variants.values():
            backend.close()
        meter.close()

    def fig(values: list[float]) -> str:
        return f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"

    print(f"{args.mode}, {args.rounds} blocks of {len(subs)} jobs per folder, CPU ms per job: median (range)")
    print(f"{'':3}{'job cgroup':>22}{'servers':>22}{'job + servers':>22}{'host':>22}  folder")
    for key, folder in names.items():
        v = rows[key]
        print(f"{key:3}{fig([x[0] for x in v]):>22}{fig([x[1] for x in v]):>22}"
              f"{fig([x[0] + x[1] for x in v]):>22}{fig([x[2] for x in v]):>22}  {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
