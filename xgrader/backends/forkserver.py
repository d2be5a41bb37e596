"""The bwrap backend's fork servers: a fresh sandbox per job without a new
bwrap and a new interpreter per job.

A fork server ("zygote", `sandbox/zygote.py`) is one long-lived bwrap sandbox
whose Python has imported the runner (or pytest, for the test side) and
nothing else. For each job the host sends it one request (the job's limits,
environment, argv and descriptors: stdio, channel, a memfd with the files,
the job cgroup's `cgroup.procs` files opened here) and it forks a process
that joins the job's cgroup, unshares mount, pid, network and IPC
namespaces, mounts its own /tmp and /proc, drops every capability, loads the
seccomp deny-list and runs the job's script. Each job still gets a sandbox
of its own; what it saves is bwrap's set-up of the root and the interpreter
start-up (docs/sandbox.md, "fork server"; docs/performance.md for figures).

Ownership: the process that created the backend starts the servers (the
daemon's parent, before it forks job children, see Backend.prepare); forked
children use the inherited socket and never start one. A server exits when
every copy of the host's end of its socket is closed (its owner and all of
the owner's forked children gone). A server that died or cannot be reached
makes jobs start cold (plain bwrap) until its owner starts a new one.
"""

from __future__ import annotations

import array
import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import weakref
from typing import Any

import structlog

from xgrader.backends.base import RUNNER_DIR, Limits, SandboxError, SandboxJob, clean_text
from xgrader.backends.process import ProcessSandbox, parse_usage, rlimit_values, safe_relpath

log = structlog.get_logger(__name__)

START_TIMEOUT_S = 20.0     # a server imports pytest: seconds at worst
SPAWN_TIMEOUT_S = 10.0     # request to "set up": milliseconds normally
RETRY_AFTER_S = 30.0       # a server that failed to start is not retried before this
# The server's own cgroup and rlimits: its CPU rlimit counts its whole life (a
# fork costs it well under a millisecond); fds: a request passes about ten,
# and a forked job moves its own above 100 before it takes 0-4; files are
# written before the job's own rlimits apply.
ZYGOTE_LIMITS = Limits(memory_mb=1024, pids=256, tmp_mb=1, cpu_s=10_000_000, wall_s=10_000_000,
                       open_files=1024, file_mb=1024)

# The interpreter flags a server runs with, and the modules it imports once.
FLAVOURS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("-I", "-S"): ("runner_core",),
    ("-I",): ("runner_core", "pytest_side.preload"),
}


def flavour_of(argv: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    """(flags, script argv) when `argv` is `python3 FLAGS SCRIPT ...` for a
    script of the runner folder and a flavour a server exists for."""
    if len(argv) < 2 or argv[0] != "python3":
        return None
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        i += 1
    flags = tuple(argv[1:i])
    if flags not in FLAVOURS or i >= len(argv) or not argv[i].startswith(RUNNER_DIR + "/"):
        return None
    return flags, argv[i:]


class ForkedProcess:
    """A Popen look-alike for a job forked by a server: the host is not its
    parent, so its exit status comes as an `X code cpu_us maxrss_kb` line on
    the status socket (EOF without one: it was killed, e.g. with its
    cgroup). `rusage` is then (CPU seconds, largest process MB) of what the
    job's init reaped."""

    def __init__(self, status_fd: int, stdin: int, stdout: int, stderr: int, pid: int | None = None) -> None:
        self.pid = pid   # the job's init (pid 1 of its namespace), as the host sees it
        self._status = status_fd
        self._buf = b""
        self.returncode: int | None = None
        self.rusage: tuple[float, float] | None = None
        self.stdin = open(stdin, "wb", buffering=0)
        self.stdout = open(stdout, "rb", buffering=0)
        self.stderr = open(stderr, "rb", buffering=0)

    def _read(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ready, _, _ = select.select([self._status], [], [], left)
            if not ready:
                return
            chunk = os.read(self._status, 4096)
            self._buf += chunk
            for line in self._buf.split(b"\n"):
                if line.startswith(b"X "):
                    code, _, usage = line[2:].partition(b" ")
                    try:
                        self.returncode = int(code)
                    except ValueError:
                        self.returncode = -9
                    self.rusage = parse_usage(usage)
            if not chunk and self.returncode is None:
                self.returncode = -9  # the server died (its pid namespace took the job along)
            if self.returncode is not None:
                os.close(self._status)
                self._status = -1

    def forget(self) -> None:
        if self._status >= 0:
            os.close(self._status)
            self._status = -1

    def poll(self) -> int | None:
        if self.returncode is None:
            self._read(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._read(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired("forked job", timeout or 0)
        return self.returncode


class ForkedSandbox(ProcessSandbox):
    """A job forked by a server: killed through its cgroup (the host is not
    its parent). kill() signals and returns (JobCgroup.kill_once: the job's
    init takes its pid namespace along); wait() then gets the init's exit
    status from the server and JobCgroup.finish() checks nothing is left."""

    def kill(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._on_kill is not None:
            self._on_kill()

    init: "InitHandle | None" = None  # rlimit mode: how the job is killed

    def forget_after_fork(self) -> None:
        """In a forked child: close this process's copies of the job's
        descriptors; the job stays the parent's (warm.py)."""
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()
        self.proc.forget()
        if self._channel is not None:
            self._channel.close()
        if self.init is not None:
            self.init.close()


class InitHandle:
    """Rlimit mode (no cgroup holds the job): a forked job's init as a
    pidfd. SIGKILL to it takes the job's whole pid namespace along, and a
    pidfd never names a recycled pid."""

    def __init__(self, pid: int) -> None:
        try:
            self.fd = os.pidfd_open(pid)
        except ProcessLookupError:  # exited and reaped already
            self.fd = -1

    def kill(self) -> None:
        fd = self.fd
        if fd >= 0:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:  # gone, or closed meanwhile by another thread
                pass

    def close(self) -> dict:
        """ProcessSandbox's on_done: nothing to account beyond the rusage."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
        return {}


class _Running:
    """A started server's parts. Stopped explicitly, or when its Zygote is
    collected or the interpreter exits (weakref.finalize): its cgroup is
    removed with it. Only its owner process stops it; elsewhere (a forked
    child) stopping only closes that process's copy of the socket."""

    def __init__(self, flags: tuple[str, ...]) -> None:
        self.flags = flags
        self.owner = os.getpid()
        self.sock: socket.socket | None = None
        self.proc: subprocess.Popen | None = None
        self.cgroup: Any = None
        self.err: Any = tempfile.TemporaryFile(prefix="xgrader-zygote-")

    def stderr(self) -> str:
        try:
            self.err.seek(0)
            return clean_text(self.err.read(4000)).strip()
        except (OSError, ValueError):
            return ""

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if os.getpid() != self.owner:
            return
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.proc.wait(timeout=2)  # EOF on its socket: it exits by itself
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            elif self.proc.returncode != 0:  # 0: it saw its socket close, as asked
                log.warning("fork_server_exited", flavour=" ".join(self.flags), code=self.proc.returncode,
                            stderr=self.stderr()[-600:])
            self.proc = None
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None
        self.err.close()


class Zygote:
    """One server (one flavour). Started and restarted only by its owner."""

    def __init__(self, backend: Any, flags: tuple[str, ...]) -> None:
        self.backend = backend
        self.flags = flags
        self.owner = os.getpid()
        self.running: _Running | None = None
        self._finalizer: weakref.finalize | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()

    @property
    def sock(self) -> socket.socket | None:
        return self.running.sock if self.running is not None else None

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.running.proc if self.running is not None else None

    @property
    def cgroup(self) -> Any:
        return self.running.cgroup if self.running is not None else None

    def ensure(self) -> bool:
        """In the owner: start the server when none runs (rate-limited after
        a failure). Elsewhere: whether an inherited one is usable."""
        if os.getpid() != self.owner:
            return self.sock is not None
        with self._lock:
            if self.proc is not None and self.proc.poll() is None and self.sock is not None:
                return True
            self._stop()
            if time.monotonic() < self._retry_at:
                return False
            try:
                self._start()
                return True
            except SandboxError as exc:
                self._retry_at = time.monotonic() + RETRY_AFTER_S
                log.warning("fork_server_unavailable", flavour=" ".join(self.flags), error=str(exc)[:300])
                self._stop()
                return False

    def _start(self) -> None:
        b = self.backend
        run = self.running = _Running(self.flags)
        self._finalizer = weakref.finalize(self, run.stop)
        host, mine = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        run.sock = host
        seccomp = b.seccomp_fd()
        job = SandboxJob(argv=["python3", *self.flags, f"{RUNNER_DIR}/zygote.py", str(mine.fileno()), str(seccomp),
                               *FLAVOURS[self.flags]], limits=ZYGOTE_LIMITS, label="zygote")
        run.cgroup = b.cgroups.create("zygote", ZYGOTE_LIMITS)
        argv = [*b.zygote_launcher(run.cgroup), *b.zygote_argv(job)]
        try:
            run.proc = subprocess.Popen(argv, env={}, cwd="/", stdin=subprocess.DEVNULL,
                                        stdout=run.err, stderr=run.err, start_new_session=True,
                                        close_fds=True, pass_fds=[mine.fileno(), seccomp])
        except OSError as exc:
            raise SandboxError(f"cannot start the fork server: {exc}") from None
        finally:
            mine.close()
            os.close(seccomp)
        ready, _, _ = select.select([host], [], [], START_TIMEOUT_S)
        hello = host.recv(16) if ready else b""
        if hello != b"ready":
            raise SandboxError(f"fork server did not start: {run.stderr() or 'no answer'}")
        log.info("fork_server_started", flavour=" ".join(self.flags), pid=run.proc.pid)

    def _stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs _Running.stop once
            self._finalizer = None
        self.running = None

    def close(self) -> None:
        """Owner: stop the server. A forked child: drop its copy of the socket."""
        with self._lock:
            self._stop()

    def template_pids(self) -> list[int]:
        """The pytest side's template servers (pytest_side/xgrader_template.py:
        children of the forking server that live as long as it does), host pids."""
        chain = self.pids()
        if len(chain) < 4:
            return []
        try:
            with open(f"/proc/{chain[-1]}/task/{chain[-1]}/children") as fh:
                kids = [int(k) for k in fh.read().split()]
        except OSError:
            return []
        out = []
        for kid in kids:
            try:
                with open(f"/proc/{kid}/comm") as fh:
                    if fh.read().strip() == "xg-pytest-tmpl":
                        out.append(kid)
            except OSError:
                pass
        return out

    def pids(self) -> list[int]:
        """bwrap, bwrap's pid 1, the zygote and the forking server (pid 1 of
        the zygote's own pid namespace, `xg-fork-server`), host pids; the
        last one is the parent of every job's init."""
        out: list[int] = []
        pid = self.proc.pid if self.proc is not None and self.proc.poll() is None else None
        for _ in range(4):
            if pid is None:
                break
            out.append(pid)
            pid = _only_child(pid)
        return out

    def spawn(self, job: SandboxJob, script: list[str], env: dict[str, str], cg: Any,
              channel_fds: tuple[int, int] | None) -> ForkedProcess:
        """Ask the server for `job`'s sandbox; raises SandboxError when it
        could not be set up (no student code ran), ConnectionError when the
        server is gone (the caller starts the job cold instead)."""
        sock = self.sock
        if sock is None:
            raise ConnectionError("no fork server")
        files = [(str(safe_relpath(name)), data) for name, data in job.files.items()]
        # The status channel is a socket: with SO_PASSCRED every line comes
        # with its sender's pid as seen from here (the job's init: our `pid`).
        status_sock, status_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        status_sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        status_w = status_theirs.detach()
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        theirs = [status_w, stdin_r, stdout_w, stderr_w]
        # No cgroup (rlimit mode): the job's memory and pids bounds are rlimits
        # too, pids counted in a user namespace of the job's own.
        procs = [os.open(os.path.join(d, cg.join_file), os.O_WRONLY) for d in cg.dirs.values()] if cg else []
        rlimits = rlimit_values(job.limits, memory=cg is None)
        if cg is None:
            rlimits.append((resource.RLIMIT_NPROC, (job.limits.pids, job.limits.pids)))
        try:
            if files:
                blob = os.memfd_create("xgrader-files", 0)
                theirs.append(blob)
                for _, data in files:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(blob, view):]
            # The caller closes its channel fds; the peer's stay the caller's.
            passed = theirs + list(channel_fds or ()) + list(job.peer or ()) + procs
            request = json.dumps({
                "argv": script, "env": env, "channel": channel_fds is not None, "peer": job.peer is not None,
                "tmp_bytes": job.limits.tmp_mb * 1024 * 1024,
                "rlimits": [[res, soft, hard] for res, (soft, hard) in rlimits],
                "files": [[name, len(data)] for name, data in files], "cgroups": len(procs),
                "userns": cg is None,
                **({"template": job.template} if job.template else {}),
                **({"cpu": job.cpu} if job.cpu is not None else {}),
            }).encode()
            try:
                sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          array.array("i", passed).tobytes())])
            except OSError as exc:
                status_sock.close()
                for fd in (stdin_w, stdout_r, stderr_r):
                    os.close(fd)
                raise ConnectionError(f"fork server gone: {exc}") from None
        finally:
            for fd in theirs + procs:
                os.close(fd)
        try:
            pid = _await_setup(status_sock, job.label, template=job.template is not None)
        except SandboxError:
            status_sock.close()
            for fd in (stdin_w, stdout_r, stderr_r):
                os.close(fd)
            raise
        return ForkedProcess(status_sock.detach(), stdin_w, stdout_r, stderr_r, pid)


_CREDS = struct.calcsize("iII")  # struct ucred


class TemplateRefused(SandboxError):
    """No template server took the job (none could be had for its key, or
    it ended before forking it): the same job without the key starts as usual."""


def _await_setup(status: socket.socket, label: str, template: bool = False) -> int | None:
    """Wait (bounded) for `S` (the job runs; returns the host pid of the
    job's init, which sent it) or `E message` / EOF (its sandbox could not
    be set up: the sandbox's error, never the student's). With a template
    key, `R`, EOF or no word in time is TemplateRefused instead."""
    ready, _, _ = select.select([status], [], [], SPAWN_TIMEOUT_S)
    data, anc = status.recvmsg(4096, socket.CMSG_SPACE(_CREDS))[:2] if ready else (b"", [])
    line = data.split(b"\n", 1)[0]
    if template and (not data or line.startswith(b"R")):  # R, EOF, or no word in time
        raise TemplateRefused(clean_text(line[2:], 300).strip() or "its template server ended")
    if line == b"S":
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _CREDS:
                return struct.unpack("iII", payload[:_CREDS])[0]
        return None
    msg = clean_text(line[2:] if line.startswith(b"E ") else line, 300).strip() or "no answer from the fork server"
    log.error("fork_server_setup_failed", label=label, error=msg)
    raise SandboxError(f"cannot set up the sandbox: {msg}")


class ForkServers:
    """The backend's servers, one per flavour, created lazily."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.servers = {flags: Zygote(backend, flags) for flags in FLAVOURS}
        self.prepared = False

    def prepare(self) -> None:
        self.prepared = True
        for server in self.servers.values():
            server.ensure()

    def for_job(self, job: SandboxJob) -> tuple[Zygote, list[str]] | None:
        found = flavour_of(job.argv)
        if found is None or _changes_startup(job.env):
            return None
        flags, script = found
        server = self.servers[flags]
        return (server, script) if server.ensure() else None

    def close(self) -> None:
        for server in self.servers.values():
            server.close()

    def pids(self) -> list[int]:
        """The servers' own processes, their template servers included: not
        their forked jobs. For leak checks in tests and operators' tools."""
        return self.chain_pids() + self.template_pids()

    def chain_pids(self) -> list[int]:
        """Each server's bwrap, its pid 1, the zygote and the forking server:
        what identifies the servers a process was forked with (template
        servers come and go with assignments)."""
        return [pid for server in self.servers.values() for pid in server.pids()]

    def template_pids(self) -> list[int]:
        return [pid for server in self.servers.values() for pid in server.template_pids()]

    def cgroup_names(self) -> list[str]:
        return [d.name for s in self.servers.values() if s.cgroup is not None for d in s.cgroup.dirs.values()]


def _only_child(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            kids = fh.read().split()
    except OSError:
        return None
    return int(kids[0]) if len(kids) == 1 else None


def _changes_startup(env: dict[str, str]) -> bool:
    """Variables read at interpreter start-up (locale, stdio encoding): a
    forked interpreter started long before cannot honour them."""
    return any(k in ("LANG", "LANGUAGE") or k.startswith("LC_") for k in env)


