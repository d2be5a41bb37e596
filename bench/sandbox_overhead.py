"""Per-job overhead of each sandbox backend over a bare `python3 -I -c pass`.

Usage: python -m bench.sandbox_overhead [N]   (prints medians and ratios)"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from xgrader.config import Settings
from xgrader.sandbox.base import SandboxJob, Verdict
from xgrader.sandbox.bwrap import BwrapBackend
from xgrader.sandbox.unsafe import UnsafeBackend


def median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main(n: int = 30) -> None:
    settings = Settings(sandbox="bwrap")
    job = SandboxJob(argv=["python3", "-I", "-c", "pass"])
    bare = median_ms(lambda: subprocess.run([settings.sandbox_python, "-I", "-c", "pass"], check=True), n)
    print(f"bare python      {bare:7.1f} ms  1.00x")
    for backend in (BwrapBackend(settings), UnsafeBackend(settings)):
        def one(b=backend):
            assert b.run(job).verdict == Verdict.ok
        ms = median_ms(one, n)
        print(f"{backend.name:<16} {ms:7.1f} ms  {ms / bare:.2f}x  overhead {ms - bare:+.1f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
