"""Per-job cost of the sandbox backends, measured in one run on this machine.

1. Overhead per batch job over a bare `python3 -I -c pass` (target for bwrap:
   <= 15 ms median): bwrap started cold (that argv is no runner script, so no
   fork server), and a runner `exec` of an empty program forked by the fork
   server (docs/sandbox.md) next to the same runner run bare on the host.
   Samples come in rounds of 10-run blocks (bare, bwrap, unsafe, bare, ...)
   so a busy host's drift hits all of them alike.
2. Latency of a trivial interactive job (start the runner, load a one-line
   module, call it, exit) forked by the fork server, started cold, and from
   the warm pool (xgrader/backends/warm.py; the pool refills between samples,
   outside the timing: the latency a job sees when a warm sandbox is ready).
3. Where a cold bwrap start goes: the same bwrap command without our harness
   (no cgroup, no seccomp memfd, no rlimits/uid drop in a Python preexec),
   and cgroup create+remove alone.

Usage: python -m bench.sandbox_overhead [N]      (default N=40)"""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

from xgrader.config import Settings
from xgrader.backends.base import SandboxJob, Verdict
from xgrader.backends.bwrap import BwrapBackend
from xgrader.backends.unsafe import UnsafeBackend
from xgrader.backends.warm import WarmPool

BLOCK = 10
MODULE = {"m.py": b"def f(x):\n    return x + 1\n"}


def _ms(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


def trivial_interactive(backend) -> None:
    job = SandboxJob(argv=backend.python_argv(), files=MODULE, channel=True, label="bench")
    sb = backend.start(job)
    try:
        for i, req in enumerate(({"op": "load", "module": "m", "path": "m.py"},
                                 {"op": "call", "target": "f", "args": [1], "kwargs": {}}), 1):
            sb.channel.send({**req, "id": i})
            while (reply := sb.channel.recv(10)).get("id") != i:
                pass
            assert reply.get("ok"), reply
        sb.channel.send({"op": "exit", "id": 9})
        assert sb.wait().verdict is Verdict.ok
    finally:
        sb.kill()


def main(n: int = 40) -> dict[str, float]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    settings = Settings(sandbox="bwrap")
    bwrap, unsafe = BwrapBackend(settings), UnsafeBackend(settings)
    cold_bwrap = BwrapBackend(Settings(sandbox="bwrap", sandbox_fork_server=False))
    py = settings.sandbox_python
    batch = SandboxJob(argv=["python3", "-I", "-c", "pass"], label="bench")
    runner_job = SandboxJob(argv=bwrap.python_argv("exec", "m.py"), files={"m.py": b"pass\n"}, label="bench")
    scratch = tempfile.mkdtemp(prefix="xgbench-")
    Path(scratch, "m.py").write_text("pass\n")
    runner = str(Path(settings.runner_dir) / "runner.py")
    bwrap.prepare()

    # 1. batch overhead: blocks of BLOCK runs of each kind, in rounds (drift on a
    # busy host hits all kinds alike; back-to-back runs within a block, as a
    # daemon runs jobs; per-sample alternation would thrash caches).
    kinds = {"bare": lambda: subprocess.run([py, "-I", "-c", "pass"], check=True),
             "bwrap": lambda: bwrap.run(batch), "unsafe": lambda: unsafe.run(batch),
             "bare runner": lambda: subprocess.run([py, "-I", "-S", runner, "exec", "m.py"], cwd=scratch, check=True),
             "bwrap fork server": lambda: bwrap.run(runner_job)}
    runs: dict[str, list[float]] = {name: [] for name in kinds}
    for _ in range(max(1, n // BLOCK)):
        for name, fn in kinds.items():
            runs[name] += [_ms(fn) for _ in range(BLOCK)]
    bare = _median(runs["bare"])
    out = {"bare_ms": bare}
    print(f"1. batch job `python3 -I -c pass`, median of {len(runs['bare'])} (rounds of {BLOCK}-run blocks)")
    print(f"   {'bare python':<22} {bare:7.1f} ms  1.00x")
    for name in ("bwrap", "unsafe"):
        ms = _median(runs[name])
        out[f"{name}_ms"] = ms
        out[f"{name}_overhead_ms"] = ms - bare
        print(f"   {name:<22} {ms:7.1f} ms  {ms / bare:.2f}x  overhead {ms - bare:+.1f} ms")
    bare_runner, forked = _median(runs["bare runner"]), _median(runs["bwrap fork server"])
    out.update(bare_runner_ms=bare_runner, forked_ms=forked, forked_overhead_ms=forked - bare_runner)
    print("   runner `exec` of an empty program:")
    print(f"   {'bare (no sandbox)':<22} {bare_runner:7.1f} ms  1.00x")
    print(f"   {'bwrap fork server':<22} {forked:7.1f} ms  {forked / bare_runner:.2f}x  "
          f"overhead {forked - bare_runner:+.1f} ms")

    # 2. trivial interactive job: cold vs warm
    pool = WarmPool(BwrapBackend(settings), 1, settings)
    cold, forks, warm = [], [], []
    try:
        for _ in range(n):
            cold.append(_ms(lambda: trivial_interactive(cold_bwrap)))
            forks.append(_ms(lambda: trivial_interactive(bwrap)))
            if not pool.wait_ready(1, timeout=10):
                raise SystemExit("warm pool did not fill")
            warm.append(_ms(lambda: trivial_interactive(pool)))
        hits = pool.hits
    finally:
        pool.close()
        bwrap.close()
    c, f, w = _median(cold), _median(forks), _median(warm)
    out.update(cold_ms=c, forked_interactive_ms=f, warm_ms=w)
    print(f"2. trivial interactive job (runner start, load, call, exit), median of {n}")
    print(f"   {'bwrap cold':<22} {c:7.1f} ms  1.00x")
    print(f"   {'bwrap fork server':<22} {f:7.1f} ms  {f / c:.2f}x")
    print(f"   {'fork server, warm pool':<22} {w:7.1f} ms  {w / c:.2f}x  ({hits}/{n} warm hits)")

    # 3. where a cold start goes
    prefix = bwrap._argv(batch, [], 3)
    prefix = [a for i, a in enumerate(prefix) if a != "--seccomp" and prefix[i - 1] != "--seccomp"]
    raw = [_ms(lambda: subprocess.run(prefix, env={}, check=True)) for _ in range(n)]
    from xgrader.backends.base import Limits

    def cgroup_cycle() -> None:
        cg = bwrap.cgroups.create("bench", Limits())
        if cg is not None:
            cg.remove()
    cgs = [_ms(cgroup_cycle) for _ in range(n)]
    print("3. cold start breakdown (medians)")
    print(f"   {'bwrap command alone':<22} {_median(raw):7.1f} ms  (as root, no cgroup/seccomp/preexec)")
    print(f"   {'cgroup create+remove':<22} {_median(cgs):7.2f} ms")
    out.update(raw_bwrap_ms=_median(raw), cgroup_ms=_median(cgs))
    return out


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
