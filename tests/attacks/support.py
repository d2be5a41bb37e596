"""Running one adversarial program in a sandbox with the suite's small limits."""

from __future__ import annotations

from xgrader.backends.base import Limits, SandboxJob, SandboxResult

# Small limits keep the suite quick (< 3 min per backend) and the host safe.
SMALL = Limits(wall_s=2.5, cpu_s=1.5, memory_mb=128, pids=32, output_bytes=64_000,
               tmp_mb=16, file_mb=8, open_files=64)


def attack(backend, src: str, stdin: bytes = b"", **limits) -> SandboxResult:
    job = SandboxJob(argv=["python3", "-I", "-S", "x.py"], files={"x.py": src.encode()}, stdin=stdin,
                     limits=SMALL.model_copy(update=limits), label="attack")
    return backend.run(job)


def lines(result: SandboxResult) -> list[list[str]]:
    return [line.split() for line in result.stdout.splitlines()]
