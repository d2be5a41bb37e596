"""Per-job overhead of the docker backend (via podman's API socket) over a bare
`python3 -I -c pass`, measured in the same run, with the phases of one job.

Usage: python -m bench.docker_overhead [N] [DOCKER_URL]
       (default URL: the socket scripts/setup-podman.sh starts)"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from xgrader.config import Settings
from xgrader.sandbox.base import SandboxJob, Verdict
from xgrader.sandbox.docker_backend import DockerBackend

DEFAULT_URL = "unix:///run/xgrader-podman.sock"


def timed(fn, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return times


def main(n: int = 20, url: str = DEFAULT_URL) -> dict[str, float]:
    settings = Settings(sandbox="docker", docker_url=url)
    backend = DockerBackend(settings)
    backend.check()
    job = SandboxJob(argv=["python3", "-I", "-c", "pass"])
    backend.run(job)  # first job pays for the engine info call and caches

    def one() -> None:
        result = backend.run(job)
        assert result.verdict == Verdict.ok, result

    # Interleaved so both see the same machine load.
    bare_t, docker_t = [], []
    for _ in range(n):
        bare_t += timed(lambda: subprocess.run([settings.sandbox_python, "-I", "-c", "pass"], check=True), 1)
        docker_t += timed(one, 1)
    bare, med = statistics.median(bare_t), statistics.median(docker_t)
    p90 = sorted(docker_t)[int(0.9 * (len(docker_t) - 1))]
    print(f"bare python      {bare:7.1f} ms  1.00x")
    print(f"docker (podman)  {med:7.1f} ms  {med / bare:.2f}x  overhead {med - bare:+.1f} ms  (p90 {p90:.1f} ms, target <= 250 ms)")
    backend.close()
    return {"bare_ms": bare, "docker_ms": med, "docker_p90_ms": p90}


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20, sys.argv[2] if len(sys.argv) > 2 else DEFAULT_URL)
