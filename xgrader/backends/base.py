"""The one contract every sandbox backend honours.

A :class:`SandboxJob` goes in (files, command, stdin, limits); a
:class:`SandboxResult` comes out. Interactive jobs (the pytest proxy talks to a
live student process) use :meth:`Backend.start`, which returns a
:class:`RunningSandbox` with a message :class:`Channel` owned by the harness.

Nothing that comes back from a sandbox is trusted: every byte read back is
capped, decoded with replacement and stripped of NUL/control characters
(:func:`clean_text`) before anything renders it.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from xgrader.backends.deadlines import Deadline, Deadlines

# Where the job's files are placed inside every sandbox; the only writable place.
WORKDIR = "/tmp/work"
# Where the stdlib-only runner from the repository's `sandbox/` folder is mounted.
RUNNER_DIR = "/opt/xgrader"


class Limits(BaseModel):
    """Resource limits of one sandboxed job. Operators set defaults and ceilings;
    an assignment may lower or raise within the ceilings (see :meth:`clamp`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wall_s: float = Field(10.0, gt=0, description="wall-clock seconds, enforced by the host")
    cpu_s: float = Field(5.0, gt=0, description="CPU seconds (rlimit and cgroup quota)")
    memory_mb: int = Field(256, ge=16, description="memory including swap")
    pids: int = Field(64, ge=4, description="processes and threads")
    output_bytes: int = Field(1_000_000, ge=1024, description="stdout+stderr captured; more is a limit verdict")
    tmp_mb: int = Field(64, ge=1, description="size of the writable tmpfs")
    file_mb: int = Field(16, ge=1, description="largest single file written (RLIMIT_FSIZE)")
    open_files: int = Field(64, ge=16, description="RLIMIT_NOFILE")

    def clamp(self, ceiling: "Limits") -> "Limits":
        """Each field at most the operator's ceiling."""
        return Limits(**{k: min(v, getattr(ceiling, k)) for k, v in self.model_dump().items()})


class Verdict(str, enum.Enum):
    ok = "ok"                      # exited by itself (any exit status)
    wall_time = "wall_time"        # killed at the wall-clock limit
    cpu_time = "cpu_time"          # killed at the CPU limit
    memory = "memory"              # killed by the memory limit (OOM in its cgroup / container)
    output = "output"              # wrote more than output_bytes
    killed = "killed"              # died of a signal for another reason
    sandbox_error = "sandbox_error"  # the sandbox itself failed: infrastructure, not the student


class SandboxJob(BaseModel):
    """Files are placed under WORKDIR (relative paths, no `..`), then argv runs
    with cwd WORKDIR, an environment of exactly `env`, and stdin fed in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    argv: list[str] = Field(min_length=1)
    files: dict[str, bytes] = Field(default_factory=dict)
    stdin: bytes = b""
    env: dict[str, str] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    # Interactive jobs get a harness channel (see Channel); batch jobs may too.
    channel: bool = False
    # Host descriptors (read, write) of another sandbox's channel, handed to
    # this job as a second channel of its own (XGRADER_PEER): the pytest
    # kind's test sandbox talks to the student's runner without the host in
    # the middle. The caller keeps its descriptors. Backends whose
    # `peer_channels` is False refuse it.
    peer: tuple[int, int] | None = None
    # Jobs with the same template key run the same start-up up to where they
    # read their channel (the pytest side: configuration and collection of
    # one assignment version's tests). bwrap's fork servers run it once per
    # key and fork such jobs from there; every other path starts the job as
    # usual, which comes to the same.
    template: str | None = None
    # The CPU the job's processes run on (Backend.paired_cpu): the pytest
    # kind puts a submission's two sandboxes on one CPU. A placement hint:
    # applied where bwrap's fork servers start the job, ignored elsewhere.
    cpu: int | None = Field(None, ge=0)
    # Identifies the job in logs, cgroup names and container labels.
    label: str = "job"


class SandboxResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    verdict: Verdict
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    wall_s: float = 0.0
    cpu_s: float | None = None
    peak_memory_mb: float | None = None
    # Messages the job sent on the harness channel (already size/depth checked).
    messages: list[Any] = Field(default_factory=list)
    # For sandbox_error: what failed, for operators (never student text).
    error: str | None = None


class SandboxError(Exception):
    """The sandbox could not be set up or run: an infrastructure failure."""


class ChannelError(Exception):
    """The peer sent something that is not a valid message, or went away."""


class Channel(abc.ABC):
    """JSON messages to and from the runner, one per line, each capped in size
    and nesting depth by the receiving side. Owned by the harness, but the
    student's process can write to it too: never trust what arrives as a
    verdict, only as data to compare outside."""

    @abc.abstractmethod
    def send(self, message: Any) -> None: ...

    @abc.abstractmethod
    def recv(self, timeout: float) -> Any:
        """Next message; raises TimeoutError, or ChannelError on EOF/garbage."""

    def pending(self) -> bool:
        """Whether recv() has a whole message already read (no wait for it)."""
        return False


class RunningSandbox(abc.ABC):
    channel: Channel
    job: SandboxJob
    started: float  # time.monotonic() the job's clock runs from
    _timer: "Deadline | None" = None

    def arm(self, deadlines: "Deadlines") -> None:
        """Start the host-side wall clock (from self.started) on the
        backend's deadline thread: the limit holds even when nobody is in
        wait(), as with interactive jobs."""
        if self._timer is None:
            self._timer = deadlines.at(self.started + self.job.limits.wall_s, self._expire)

    def _expire(self) -> None:
        """The wall clock ran out (called on the timer's thread)."""
        self.kill()

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> SandboxResult:
        """Close stdin, wait for exit (killing at the wall limit), collect the result."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Kill everything the job started. Idempotent."""

    def __enter__(self) -> "RunningSandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class Backend(abc.ABC):
    """A sandbox backend. Implementations: bwrap, docker, unsafe (debug only)."""

    name: str = "abstract"
    # Whether jobs may get a peer channel (SandboxJob.peer): descriptors
    # passed into the sandbox. Not docker: its channels are sockets there.
    peer_channels: bool = False

    @abc.abstractmethod
    def start(self, job: SandboxJob) -> RunningSandbox:
        """Start the job; raises SandboxError when the sandbox cannot start."""

    def run(self, job: SandboxJob) -> SandboxResult:
        """Run a batch job to completion."""
        with self.start(job) as running:
            return running.wait()

    def python_argv(self, *args: str) -> list[str]:
        """argv that starts the sandbox's Python on the runner: `python -I -S runner.py ARGS`."""
        return ["python3", "-I", "-S", f"{RUNNER_DIR}/runner.py", *args]

    def paired_cpu(self) -> contextlib.AbstractContextManager[int | None]:
        """`with backend.paired_cpu() as cpu:` a CPU for sandboxes that call
        each other (SandboxJob.cpu), held until the block ends; None where
        jobs are not pinned (xgrader/backends/cpus.py)."""
        return contextlib.nullcontext(None)

    def check(self) -> None:
        """Raise SandboxError if the backend is unusable (readiness probe)."""

    def prepare(self) -> None:
        """Start long-lived helpers (bwrap's fork servers) in this process.
        A daemon calls it before forking job children, which then share them;
        idempotent, and it restarts a helper that died."""

    def helpers(self) -> tuple:
        """Identities of long-lived helpers this process started (bwrap's fork
        server pids). A process forked earlier holds the old ones when they
        change: the daemon then replaces its forker."""
        return ()

    def cleanup_stale(self) -> None:
        """Remove what a crashed predecessor left behind (cgroups, containers, temp dirs)."""

    def kill_label(self, label: str) -> None:
        """Kill and remove everything started for jobs labelled `label`
        (SandboxJob.label). The daemon calls this after SIGKILLing a job's
        process tree: containers and cgroups are not in that tree. Idempotent."""

    def close(self) -> None:
        """Release pooled resources (warm sandboxes)."""


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def clean_text(data: bytes | str, limit: int | None = None) -> str:
    """Decode untrusted bytes with replacement and strip NUL/control characters
    and lone surrogates (tab, newline and CR survive)."""
    if isinstance(data, bytes):
        if limit is not None:
            data = data[:limit]
        text = data.decode("utf-8", errors="replace")
    else:
        text = data[:limit] if limit is not None else data
    return _CONTROL.sub("", text)
