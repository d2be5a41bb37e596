"""Process supervision every backend shares: job-file placement, rlimits,
fd layout for the channel, the sandbox's site dirs, whether a pid is alive,
a job's usage read from /proc where no cgroup accounts for it (TreeUsage),
and ProcessSandbox (one started process group: capped streamed output, wall
timer, group kill, verdict)."""

from __future__ import annotations

import fcntl
import os
import resource
import selectors
import signal
import subprocess
import time
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from xgrader.backends.base import (
    Limits, RunningSandbox, SandboxError, SandboxJob, SandboxResult, clean_text,
)
from xgrader.backends.channel import FdChannel
from xgrader.backends.deadlines import Deadline
from xgrader.backends.verdict import classify

log = structlog.get_logger(__name__)

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def safe_relpath(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise SandboxError(f"job file path not allowed: {name!r}")
    return rel


def place_files(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        target = root / safe_relpath(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def pid_alive(pid: int) -> bool:
    """Running and not a zombie: a SIGKILLed process its parent has not
    reaped yet is dead for every purpose here (whose cgroups, containers or
    folders are orphans). A pid of another user's process counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


def rlimit_values(limits: Limits, memory: bool = False) -> list[tuple[int, tuple[int, int]]]:
    """(resource, (soft, hard)) for a job. CPU soft < hard so SIGXCPU comes
    first, then SIGKILL; no core dumps. `memory`: no cgroup bounds the job's
    memory (rlimit mode), so RLIMIT_DATA caps each process at memory_mb
    (private writable memory: heap, anonymous mappings, thread stacks; not
    the address space merely reserved)."""
    cpu = max(1, int(limits.cpu_s + 0.999))
    fsize = limits.file_mb * 1024 * 1024
    values = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_FSIZE, (fsize, fsize)),
        (resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files)),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    if memory:
        data = limits.memory_mb * 1024 * 1024
        values.append((resource.RLIMIT_DATA, (data, data)))
    return values


def rlimit_key(limits: Limits, memory: bool = False) -> tuple:
    """What is fixed when a sandbox starts (rlimits, tmpfs size; in rlimit
    mode also the memory and pids bounds): warm sandboxes only serve jobs
    with the same key."""
    key = (*(v for _, v in rlimit_values(limits, memory)), limits.tmp_mb)
    return (*key, limits.pids) if memory else key


def set_rlimits(limits: Limits, nproc: int | None = None) -> None:
    """In the child before exec. RLIMIT_NPROC only when asked: it counts every
    process of the (host) uid, not the job's, and root ignores it."""
    for res, value in rlimit_values(limits):
        resource.setrlimit(res, value)
    if nproc is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def arrange_fds(sources: list[int]) -> None:
    """In the child: sources[i] lands on fd 3+i, every other fd above 2 is closed
    (Popen's pass_fds cannot place fds by number, so close_fds is off)."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1024) for fd in sources]
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i)
    os.closerange(3 + len(sources), resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def install_channel_fds(child_r: int, child_w: int) -> None:
    """In the child: the channel ends land on fds 3 (read) and 4 (write)."""
    arrange_fds([child_r, child_w])


def sandbox_site_dirs(python: str, venv: Path | None = None, venv_dir: str = "") -> list[str]:
    """The site-packages directories of the sandbox's Python as seen inside the
    sandbox, for SANDBOX_SITE_DIRS: the runner runs with -S and appends these
    to sys.path itself, so student code imports course packages while no .pth
    or sitecustomize is ever run. Same list and order as site.getsitepackages()
    in the sandbox: the venv's own directory (at `venv_dir` inside) first, then the
    interpreter's unless the venv excludes system site packages. Asked of the
    interpreter once, with -S (the site module would run the venv's *.pth on
    the host); [] with a warning if it cannot tell (student code then sees
    the standard library only)."""
    code = "import site, sys; print('%d.%d' % sys.version_info[:2]); print(*site.getsitepackages(), sep='\\n')"
    try:
        r = subprocess.run([python, "-I", "-S", "-c", code], capture_output=True, env={}, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("sandbox_site_dirs_unknown", python=python, error=str(exc))
        return []
    version, *system = r.stdout.decode(errors="replace").splitlines()
    out = []
    if venv is not None:
        own = f"lib/python{version}/site-packages"
        if (venv / own).is_dir():
            out.append(f"{venv_dir or venv}/{own}")
        cfg = venv / "pyvenv.cfg"
        conf = dict(line.split("=", 1) for line in cfg.read_text(errors="replace").splitlines() if "=" in line) \
            if cfg.is_file() else {}
        conf = {k.strip().lower(): v.strip().lower() for k, v in conf.items()}
        if conf.get("include-system-site-packages", "true") != "true":
            return out
    return out + [d for d in system if os.path.isdir(d)]


_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """Children of every thread of `pid` (a thread's children are listed
    under that thread only)."""
    out: list[bytes] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                out += fh.read().split()
        except OSError:
            pass
    return [int(x) for x in out]


def _read_int_fields(path: str) -> list[bytes]:
    with open(path, "rb") as fh:
        return fh.read().split()


def parse_usage(data: bytes) -> tuple[float, float] | None:
    """`cpu_us maxrss_kb` as written by a job's init (sandbox/job_init.py, the
    fork server's `X` line) -> (CPU seconds, largest process MB); None if it
    is not that. Data from inside the sandbox: it only ever accounts."""
    fields = data.split(b"\n", 1)[0].split()
    if len(fields) != 2 or not all(f.isdigit() and len(f) < 16 for f in fields):
        return None
    return int(fields[0]) / 1e6, int(fields[1]) / 1024


class TreeUsage:
    """A job's memory and CPU time where no cgroup accounts for them (rlimit
    mode): summed over the live processes below `root` (bwrap, or a forked
    job's init), read from /proc. Every job process is visible to the host
    (pid namespaces nest), and every one stays below `root`: an orphan is
    reparented to its pid namespace's init, which is `root` or below it.

    Memory is the resident size summed over the processes; pages that
    forked processes share are counted once per process there, so a sum over
    the limit is checked again with the proportional set size (Pss), which
    splits shared pages. CPU is user + system time of the live processes
    plus what they reaped (cutime/cstime)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak_mb = 0.0
        self.cpu_s = 0.0  # at the last sample

    def pids(self) -> list[int]:
        found, stack = [], [self.root]
        while stack and len(found) < 100_000:
            pid = stack.pop()
            found.append(pid)
            stack.extend(_children(pid))
        return found

    def sample(self, limit_mb: float | None = None) -> tuple[float, float]:
        """(memory MB, CPU seconds) now; memory as Pss when the plain sum is
        over `limit_mb`."""
        rss = cpu_ticks = 0
        pids = self.pids()
        for pid in pids:
            try:
                rss += int(_read_int_fields(f"/proc/{pid}/statm")[1])
                with open(f"/proc/{pid}/stat", "rb") as fh:
                    stat = fh.read()
                fields = stat[stat.rfind(b")") + 2:].split()
                cpu_ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
            except (OSError, IndexError, ValueError):  # exited meanwhile
                continue
        mem_mb = rss * _PAGE / 2**20
        if limit_mb is not None and mem_mb > limit_mb:
            mem_mb = min(mem_mb, self._pss_mb(pids))
        self.peak_mb = max(self.peak_mb, mem_mb)
        self.cpu_s = max(self.cpu_s, cpu_ticks / _TICK)
        return mem_mb, self.cpu_s

    @staticmethod
    def _pss_mb(pids: list[int]) -> float:
        total_kb = 0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
                    for line in fh:
                        if line.startswith(b"Pss:"):
                            total_kb += int(line.split()[1])
                            break
            except (OSError, ValueError):  # gone, or not readable (a non-dumpable init: tiny)
                continue
        return total_kb / 1024


class ProcessSandbox(RunningSandbox):
    """Supervises one started process group: capped streamed output, wall timer, kill.

    The wall clock is enforced by the host even when nobody calls wait() (an
    interactive job whose harness is stuck): :meth:`arm` starts a timer that
    kills the job at its deadline."""

    cgroup: Any = None  # the job's JobCgroup (bwrap), for warm activation
    # Without a cgroup (rlimit mode): the job's usage read from /proc while it
    # runs, and its processes' rusage once reaped ((cpu_s, largest process MB)).
    tree: TreeUsage | None = None
    rusage: tuple[float, float] | None = None
    report_fd = -1  # a cold job's init writes `cpu_us maxrss_kb` there (sandbox/job_init.py)

    def __init__(self, proc: subprocess.Popen, job: SandboxJob, started: float,
                 channel: FdChannel | None, on_kill: Any = None, on_done: Any = None,
                 exit_128_is_signal: bool = False) -> None:
        self.proc = proc
        self.job = job
        self.started = started
        if channel is not None:
            self.channel = channel
        self._channel = channel
        self._on_kill = on_kill      # extra kill (e.g. the job's cgroup)
        self._on_done = on_done      # collect accounting + cleanup -> dict of overrides
        self._result: SandboxResult | None = None
        # bwrap (pid 1 in the box) reports a child killed by signal N as exit 128+N.
        self._exit_128 = exit_128_is_signal
        self._stdin_left = memoryview(job.stdin)
        self._timer: Deadline | None = None
        self._expired = False
        self._cpu_base = 0.0

    def _expire(self) -> None:
        if self._result is None and self.proc.poll() is None:
            self._expired = True
            log.info("sandbox_wall_expired", label=self.job.label)
            self.kill()

    def rebind(self, job: SandboxJob) -> None:
        """A pre-started sandbox becomes `job`'s: its clock starts now, and
        CPU time spent starting up is not charged to the job."""
        self.job = job
        self.started = time.monotonic()
        self._stdin_left = memoryview(job.stdin)
        if self.cgroup is not None:
            self._cpu_base = self.cgroup.stats().get("cpu_s") or 0.0
        elif self.tree is not None:
            self._cpu_base = self.tree.sample()[1]
            self.tree.peak_mb = 0.0

    def _reap(self, timeout: float) -> None:
        """Wait (bounded) for the process to exit and reap it; then read the
        usage report of a cold job's init in rlimit mode (report_fd)."""
        self.proc.wait(timeout=timeout)
        fd, self.report_fd = self.report_fd, -1
        if fd >= 0:
            try:
                os.set_blocking(fd, False)
                self.rusage = parse_usage(os.read(fd, 256))
            except OSError:
                pass
            finally:
                os.close(fd)

    def _tree_stats(self) -> dict[str, Any]:
        """Accounting without a cgroup: CPU from the rusage of what was
        reaped (or the last sample), memory as the larger of the sampled
        job total and the largest process."""
        rusage = self.rusage or getattr(self.proc, "rusage", None)
        out: dict[str, Any] = {}
        # A killed job's processes are reaped by the kernel unaccounted: the
        # last sample may know more than the rusage then.
        sampled = self.tree.cpu_s if self.tree is not None else 0.0
        if rusage is not None:
            out["cpu_s"] = max(rusage[0], sampled)
            out["largest_process_mb"] = rusage[1]
        elif self.tree is not None:
            out["cpu_s"] = sampled
        peak = max(self.tree.peak_mb if self.tree is not None else 0.0, rusage[1] if rusage else 0.0)
        if peak:
            out["peak_memory_mb"] = peak
        return out

    def kill(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._on_kill is not None:
            self._on_kill()

    def wait(self, timeout: float | None = None) -> SandboxResult:
        if self._result is not None:
            return self._result
        limits = self.job.limits
        wall = limits.wall_s if timeout is None else min(timeout, limits.wall_s)
        deadline = self.started + wall
        cap = limits.output_bytes
        bufs = {"stdout": bytearray(), "stderr": bytearray()}
        over_output = timed_out = False
        sel = selectors.DefaultSelector()
        assert self.proc.stdout and self.proc.stderr and self.proc.stdin
        for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            os.set_blocking(stream.fileno(), False)
            sel.register(stream.fileno(), selectors.EVENT_READ, name)
        stdin_fd = self.proc.stdin.fileno()
        if self._stdin_left:
            os.set_blocking(stdin_fd, False)
            sel.register(stdin_fd, selectors.EVENT_WRITE, "stdin")
        else:
            self.proc.stdin.close()
        open_streams = 2
        over_cpu = over_memory = False
        # With a cgroup the host also enforces CPU time itself: exact, whatever
        # the job does with SIGXCPU, and summed over all its processes. Without
        # one (rlimit mode) it samples the job's processes for CPU time and
        # memory: the only job-wide bounds there are.
        tree = self.tree if self.cgroup is None else None
        poll = 0.1 if self.cgroup is not None or tree is not None else 0.5
        while open_streams:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if self.cgroup is not None:
                used = self.cgroup.cpu_usage()
                if used is not None and used - self._cpu_base > limits.cpu_s:
                    over_cpu = True
                    break
            elif tree is not None:
                mem_mb, used = tree.sample(limits.memory_mb)
                if used - self._cpu_base > limits.cpu_s:
                    over_cpu = True
                    break
                if mem_mb > limits.memory_mb:
                    over_memory = True
                    break
            for key, _ in sel.select(min(left, poll)):
                if key.data == "stdin":
                    try:
                        n = os.write(stdin_fd, self._stdin_left[:65536])
                        self._stdin_left = self._stdin_left[n:]
                    except (BrokenPipeError, OSError):
                        self._stdin_left = memoryview(b"")
                    if not self._stdin_left:
                        sel.unregister(stdin_fd)
                        self.proc.stdin.close()
                    continue
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    open_streams -= 1
                    continue
                buf = bufs[key.data]
                room = cap - len(bufs["stdout"]) - len(bufs["stderr"])
                buf += chunk[: max(room, 0)]
                if len(chunk) > room:
                    over_output = True
                    break
            if over_output:
                break
        sel.close()
        if timed_out or over_output or over_cpu or over_memory:
            self.kill()
        if self._timer is not None:
            self._timer.cancel()
        # Streams closed (or we killed): reap, bounded by what is left of the wall.
        try:
            self._reap(max(deadline - time.monotonic(), 0.05))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
            self._reap(10.0)
        elapsed = time.monotonic() - self.started
        # Anything the job left running (daemonized grandchildren) dies with the job.
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        extra: dict[str, Any] = self._on_done() if self._on_done else {}
        if tree is not None:
            extra = {**self._tree_stats(), **extra}
        rc = self.proc.returncode
        code = rc if rc is not None and rc >= 0 else None
        sig = -rc if rc is not None and rc < 0 else None
        if self._exit_128 and code is not None and 128 < code < 128 + 65:
            code, sig = None, code - 128
        cpu_s = extra.get("cpu_s")
        if cpu_s is not None:
            cpu_s = max(cpu_s - self._cpu_base, 0.0)
        verdict = classify(
            limits, signal=sig, exit_code=code, cpu_s=cpu_s, over_output=over_output, over_cpu=over_cpu,
            oom=bool(extra.get("oom")) or over_memory, timed_out=timed_out or self._expired,
            largest_process_mb=extra.get("largest_process_mb"))
        self._result = SandboxResult(
            verdict=verdict, exit_code=code, signal=sig,
            stdout=clean_text(bytes(bufs["stdout"])), stderr=clean_text(bytes(bufs["stderr"])),
            stdout_truncated=over_output, stderr_truncated=over_output,
            wall_s=elapsed, cpu_s=cpu_s, peak_memory_mb=extra.get("peak_memory_mb"),
        )
        if self._channel is not None:
            self._channel.close()
        return self._result


