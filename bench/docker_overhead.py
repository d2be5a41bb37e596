"""Per-job overhead of the docker backend (via podman's API socket) over a bare
`python3 -I -c pass`, measured in the same run; then a trivial interactive job
(start, load, call: until the reply; teardown follows) cold and from the warm pool
(XGRADER_WARM_POOL: containers pre-started before a job arrives, each used once).

Usage: python -m bench.docker_overhead [N] [DOCKER_URL]
       (default URL: the socket scripts/setup-podman.sh starts)"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from xgrader.config import Settings
from xgrader.backends.base import SandboxJob, Verdict
from xgrader.backends.docker_backend import DockerBackend

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
    cold, warm = interactive(n, url)
    print(f"trivial interactive job, cold       {cold:7.1f} ms  1.00x")
    print(f"trivial interactive job, warm pool  {warm:7.1f} ms  {warm / cold:.2f}x")
    return {"bare_ms": bare, "docker_ms": med, "docker_p90_ms": p90, "interactive_cold_ms": cold,
            "interactive_warm_ms": warm}


def interactive(n: int, url: str) -> tuple[float, float]:
    """Medians of start -> load -> call -> result, cold and warm (the pool
    refilled between samples: the latency of a job that finds one ready)."""
    from xgrader.backends import make_backend
    src = {"sub.py": b"def f(x):\n    return x + 1\n"}

    def one(b) -> float:
        """ms until the call's reply (what the grade waits for); teardown after."""
        t = time.perf_counter()
        job = SandboxJob(argv=b.python_argv(), files=src, channel=True, label="bench")
        with b.start(job) as sb:
            sb.channel.send({"op": "load", "module": "sub", "path": "sub.py", "id": 1})
            assert sb.channel.recv(20)["ok"]
            sb.channel.send({"op": "call", "target": "f", "args": [1], "kwargs": {}, "id": 2})
            assert sb.channel.recv(20)["value"] == 2
            return (time.perf_counter() - t) * 1000

    cold_b = DockerBackend(Settings(sandbox="docker", docker_url=url))
    pool = make_backend(Settings(sandbox="docker", docker_url=url, warm_pool=1))
    cold_t, warm_t = [], []
    try:
        for _ in range(n):
            cold_t.append(one(cold_b))
            pool.wait_ready(1, timeout=30)
            warm_t.append(one(pool))
    finally:
        pool.close()
        cold_b.close()
    return statistics.median(cold_t), statistics.median(warm_t)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20, sys.argv[2] if len(sys.argv) > 2 else DEFAULT_URL)
