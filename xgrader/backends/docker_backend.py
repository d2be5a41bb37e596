"""Docker backend: one container per job through the docker SDK, against a
Docker engine or podman's Docker-compatible API socket.

Every container: no network, memory == memory+swap, pids limit, one CPU,
read-only root, a size-capped noexec/nosuid tmpfs at /tmp as the only writable
place, uid 65534, all capabilities dropped, no-new-privileges, rlimits
(CPU, FSIZE, NOFILE, CORE=0), an explicit environment, an init process, and
a seccomp profile shipped with xgrader (seccomp-docker.json, the container
engines' default) tightened with the bwrap backend's deny-list (ptrace,
mount, unshare/setns, namespace flags to clone, keyrings, bpf, ...; see
seccomp_profile). With the cgroupfs driver each job gets its own cgroup
parent, read after the exit for CPU time, peak memory and OOM. A rootless
engine that cannot enforce memory and pids limits (cgroup v1) gets them as
rlimits in the container (RLIMIT_DATA, RLIMIT_NPROC), and the host samples
the job's memory (process.TreeUsage), as the bwrap backend does without
cgroups; the backend says so once, in a `sandbox_limits` line.

The job's folder on the host (files, stdin, channel socket) is bind-mounted
read-only at /run/xgrader. A small `sh` prologue copies the files into
/tmp/work, redirects stdin from the folder and execs the job: the files land
on the size-capped tmpfs without put_archive (which would write *under* the
tmpfs, where the job cannot see it). The harness channel is a Unix socket in
that folder (XGRADER_CHANNEL=unix:/run/xgrader/channel.sock): the runner
connects before any student code runs, the host accepts exactly one
connection, and stdout/stderr travel separately on the attach stream, so
printing can never forge channel messages.

Output is read from the attach stream (attached before start, so nothing is
missed) and capped as it arrives; nothing is read whole into memory. Every
engine call has a client timeout (Settings.docker_api_timeout_s), the wall
limit is a host-side deadline, and the container is removed in all cases.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import importlib.resources
import itertools
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from xgrader.backends.base import (
    WORKDIR, Backend, Channel, ChannelError, RunningSandbox, SandboxError, SandboxJob,
    SandboxResult, Verdict, clean_text,
)
from xgrader.backends.channel import FdChannel
from xgrader.backends.deadlines import Deadline, Deadlines
from xgrader.backends.seccomp import CLONE_NS_FLAGS, DENIED
from xgrader.backends.process import BASE_PATH, TreeUsage, pid_alive, rlimit_values, safe_relpath
from xgrader.backends.verdict import classify

if TYPE_CHECKING:
    from xgrader.config import Settings

log = structlog.get_logger(__name__)

TMP_PREFIX = "xgrader-docker-"
LABEL = "xgrader.label"          # SandboxJob.label
OWNER = "xgrader.owner"          # "<hostname>:<pid>" of the process that started the container
BOX = "/run/xgrader"             # the job's folder inside the container
IMAGE_SITE_DIRS = "/usr/local/lib/python3.11/dist-packages:/usr/lib/python3/dist-packages"  # Debian 12 python3
CHANNEL_SOCK = f"{BOX}/channel.sock"
DEFAULT_URL = "unix:///var/run/docker.sock"
# Where engines put their API socket when neither XGRADER_DOCKER_URL nor
# DOCKER_HOST says: Docker (and Docker Desktop's link), rootless and rootful
# podman (`systemctl [--user] enable --now podman.socket`), Docker Desktop's
# own, colima. The first that exists is used.
SOCKET_CANDIDATES = ("/var/run/docker.sock", "{runtime}/podman/podman.sock", "/run/podman/podman.sock",
                     "{home}/.docker/run/docker.sock", "{home}/.docker/desktop/docker.sock",
                     "{home}/.colima/default/docker.sock")
# The container's pid 1 with init=True (podman: catatonit, installed as podman-init;
# Docker: docker-init, tini).
INIT_NAMES = (b"podman-init", b"catatonit", b"docker-init", b"tini")
API_VERSION = "1.41"             # fixed: no version round trip (which could hang) per client
SANDBOX_USER = "65534:65534"
NPROC = 16384
CGROUP_ROOT = Path("/sys/fs/cgroup")
# The base seccomp profile we tighten: shipped with xgrader (the container
# engines' default, containers-common 0.50), so every job gets the same
# profile whatever the host has installed.
BASE_SECCOMP = "seccomp-docker.json"
CGROUP_PREFIX = "xgrader-docker-"
# Copies the job's files onto the tmpfs, then becomes the job (no extra process).
PROLOGUE = (f'mkdir {WORKDIR} && cp -R {BOX}/files/. {WORKDIR}/ && cd {WORKDIR} '
            f'&& exec "$@" < {BOX}/stdin')


def base_seccomp() -> dict[str, Any]:
    """The shipped base profile (package data)."""
    return json.loads(importlib.resources.files("xgrader.backends").joinpath(BASE_SECCOMP).read_text())


def engine_url(settings: Any = None) -> str:
    """XGRADER_DOCKER_URL, else DOCKER_HOST, else the first engine socket
    found where engines put it (SOCKET_CANDIDATES), else Docker's default."""
    url = getattr(settings, "docker_url", None) or os.environ.get("DOCKER_HOST")
    if url:
        return url
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    home = os.path.expanduser("~")
    for candidate in SOCKET_CANDIDATES:
        path = candidate.format(runtime=runtime, home=home)
        try:
            if Path(path).is_socket():
                return f"unix://{path}"
        except OSError:
            continue
    return DEFAULT_URL


# dash's `ulimit` flag and unit (bytes per unit; 1: a count) of each rlimit.
_ULIMIT_FLAGS = {resource.RLIMIT_CPU: ("t", 1), resource.RLIMIT_FSIZE: ("f", 512),
                 resource.RLIMIT_NOFILE: ("n", 1), resource.RLIMIT_CORE: ("c", 512),
                 resource.RLIMIT_DATA: ("d", 1024)}
# The engine's names for them (HostConfig Ulimits).
_ULIMIT_NAMES = {resource.RLIMIT_CPU: "cpu", resource.RLIMIT_FSIZE: "fsize", resource.RLIMIT_NOFILE: "nofile",
                 resource.RLIMIT_CORE: "core"}


def _rlimit_prologue(limits: Any) -> str:
    """For an engine that enforces no memory or pids limit (rootless on
    cgroup v1): the job's limits as rlimits, set by the prologue's shell
    (runc's own init would not start under them), the same values as the
    other backends' rlimit mode (process.rlimit_values): memory per process
    (RLIMIT_DATA), and the container's own rlimits again (CPU time, file
    size, open files, no core dumps: rootless podman's Docker API drops
    HostConfig's Ulimits; its CLI applies them). Processes per uid
    (RLIMIT_NPROC = pids: every container of a rootless engine shares its
    user namespace, so concurrent jobs share this bound). Soft before hard:
    a hard limit may not go below the soft one. Without -S/-H dash sets both."""
    parts = []
    for res, (soft, hard) in rlimit_values(limits, memory=True):
        flag, unit = _ULIMIT_FLAGS[res]
        if soft == hard:   # dash sets both without -S/-H
            parts.append(f"ulimit -{flag} {soft // unit}")
        else:
            parts += [f"ulimit -S -{flag} {soft // unit}", f"ulimit -H -{flag} {hard // unit}"]
    parts.append(f"ulimit -p {limits.pids}")
    return " && ".join(parts) + " && "


def seccomp_profile(base: dict[str, Any]) -> dict[str, Any]:
    """The engine's default profile (docker/containers format) with the bwrap
    backend's deny-list applied: the denied calls fail with EPERM, clone may not
    create namespaces, clone3 falls to the default action (ENOSYS on podman's
    profile) so libc uses clone, whose flags a profile can check."""
    denied = set(DENIED) | {"clone", "clone3"}
    out = copy.deepcopy(base)
    rules = []
    for rule in out.get("syscalls", []):
        names = [n for n in rule.get("names") or [rule.get("name")] if n and n not in denied]
        if names:
            rule = {k: v for k, v in rule.items() if k != "name"}
            rule["names"] = names
            rules.append(rule)
    rules.append({"names": sorted(set(DENIED)), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM})
    rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                  "args": [{"index": 0, "value": CLONE_NS_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]})
    out["syscalls"] = rules
    return out


def _profile_file(profile: str) -> Path:
    """podman takes the seccomp profile as a path. Content-addressed in TMPDIR
    (shared by every job, and with the host when the daemon is in a
    container); reused only if it is ours, private and intact: a planted file
    with a weaker profile must never be loaded."""
    digest = hashlib.sha256(profile.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"xgrader-seccomp-{digest}.json"
    try:
        st = path.lstat()
        if (path.is_file() and not path.is_symlink() and st.st_uid == os.geteuid()
                and not st.st_mode & 0o022 and path.read_text() == profile):
            return path
    except OSError:
        pass
    fd, part = tempfile.mkstemp(prefix="xgrader-seccomp-", suffix=".part")
    with os.fdopen(fd, "w") as fh:
        fh.write(profile)
    os.chmod(part, 0o644)
    try:
        os.replace(part, path)  # refused over another user's file in sticky /tmp: use ours then
    except OSError:
        return Path(part)
    return path


def runner_digest(runner_dir: Path) -> str:
    """Digest of the in-sandbox runner (every file of `sandbox/` but the image
    definition and caches): the grading image is labelled with it at build
    time (sandbox/image/build.sh), check() compares."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(runner_dir).rglob("*") if p.is_file()):
        rel = path.relative_to(runner_dir)
        if rel.parts[0] == "image" or "__pycache__" in rel.parts or path.suffix == ".pyc":
            continue
        h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _host_suffix() -> str:
    """Ends a job folder's name: daemons in other pid namespaces (compose's
    grader replicas) may share the folder's parent, and only this host's dead
    pids are this process's to clean up."""
    return ".h" + hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in label)[:40]


def _import_docker() -> Any:
    from xgrader.extras import MissingExtra, require  # optional at import time: auto falls back to bwrap

    try:
        return require("docker", "docker")
    except MissingExtra as exc:
        raise SandboxError(str(exc)) from None


def _engine_error(what: str, exc: BaseException) -> SandboxError:
    text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return SandboxError(f"container engine: {what} failed: {text}")


class JobCgroupParent:
    """A per-job cgroup parent for engines with the cgroupfs driver on this host:
    the engine puts the container (and podman its conmon) below it, and since
    it outlives the container we can read peak memory, CPU time and OOM kills
    after the exit, then remove it. (Docker's OOMKilled flag is not set by
    podman on cgroup v1 hosts.)"""

    def __init__(self, name: str, v2: bool) -> None:
        self.name = name
        self.v2 = v2

    @property
    def path(self) -> str:
        return "/" + self.name

    def _dir(self, controller: str) -> Path:
        return CGROUP_ROOT / self.name if self.v2 else CGROUP_ROOT / controller / self.name

    def _read(self, controller: str, file: str) -> str | None:
        try:
            return (self._dir(controller) / file).read_text()
        except OSError:
            return None

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.v2:
            peak = self._read("", "memory.peak")
            usage = self._read("", "cpu.stat")
            events = self._read("", "memory.events") or ""
            for line in events.splitlines():
                key, _, val = line.partition(" ")
                if key == "oom_kill" and val.strip().isdigit():
                    out["oom"] = int(val) > 0
            if usage:
                for line in usage.splitlines():
                    if line.startswith("usage_usec "):
                        out["cpu_s"] = int(line.split()[1]) / 1e6
        else:
            peak = self._read("memory", "memory.max_usage_in_bytes")
            usage = self._read("cpuacct", "cpuacct.usage")
            if usage and usage.strip().isdigit():
                out["cpu_s"] = int(usage) / 1e9
        if peak and peak.strip().isdigit():
            out["peak_memory_mb"] = int(peak) / (1024 * 1024)
        return out

    def _container_dir(self, controller: str, cid: str) -> Path:
        parent = self._dir(controller)
        for sub in parent.iterdir():  # podman: libpod-<id>, Docker: <id>
            if sub.is_dir() and cid in sub.name:
                return sub
        raise SandboxError(f"no cgroup for container {cid[:12]} under {parent}")

    def set_container_limits(self, cid: str, limits: Any) -> None:
        """A warm container becomes a job's: its own cgroup's memory (with swap)
        and pids limits become the job's (the engine set the template's)."""
        mem = str(limits.memory_mb * 1024 * 1024)
        if self.v2:
            d = self._container_dir("", cid)
            (d / "memory.max").write_text(mem)
            if (d / "memory.swap.max").exists():
                (d / "memory.swap.max").write_text("0")
            (d / "pids.max").write_text(str(limits.pids))
        else:
            d = self._container_dir("memory", cid)
            pair = [d / "memory.limit_in_bytes", d / "memory.memsw.limit_in_bytes"]
            pair = [p for p in pair if p.exists()]
            # v1 wants limit <= memsw at every step: lowering writes limit first, raising memsw first.
            try:
                for path in pair:
                    path.write_text(mem)
            except OSError:
                for path in reversed(pair):
                    path.write_text(mem)
            self._container_dir("pids", cid).joinpath("pids.max").write_text(str(limits.pids))
        # Peak memory from here on is the job's, not the warm runner's start-up.
        try:
            (self._dir("memory") / "memory.max_usage_in_bytes").write_text("0")
        except OSError:
            pass

    def _try_remove(self) -> bool:
        roots = [CGROUP_ROOT / self.name] if self.v2 else list(CGROUP_ROOT.glob(f"*/{self.name}"))
        done = True
        for root in roots:
            try:
                for sub in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    sub.rmdir()
                root.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                done = False
        return done

    def remove(self, patience: float = 0.0) -> None:
        """rmdir bottom-up in every hierarchy. podman's conmon may linger in its
        sub-cgroup after the container is gone: retried briefly here, then by a
        background thread (and cleanup_stale after a crash)."""
        deadline = time.monotonic() + patience
        while not self._try_remove():
            if time.monotonic() > deadline:
                threading.Thread(target=self._remove_later, name=f"cgroup-rm-{self.name}", daemon=True).start()
                return
            time.sleep(0.05)

    def _remove_later(self, patience: float = 300.0) -> None:
        deadline = time.monotonic() + patience
        while not self._try_remove():
            if time.monotonic() > deadline:
                log.warning("docker_cgroup_busy", cgroup=self.name)
                return
            time.sleep(0.2)


class SocketChannel(Channel):
    """Host side of the harness channel: a listening Unix socket that accepts
    the runner's one connection, lazily (the runner connects once started).
    Waits give up when the container has exited (`gone`) or on timeout."""

    def __init__(self, listener: socket.socket, gone: threading.Event, connect_timeout: float) -> None:
        self._listener: socket.socket | None = listener
        self._gone = gone
        self._connect_timeout = connect_timeout
        self._conn: socket.socket | None = None
        self._inner: FdChannel | None = None
        self._closed = False

    def _connected(self, timeout: float) -> FdChannel:
        if self._inner is not None:
            return self._inner
        deadline = time.monotonic() + timeout
        while True:
            if self._closed or self._listener is None:
                raise ChannelError("channel closed")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the sandbox did not connect in time")
            ready, _, _ = select.select([self._listener], [], [], min(left, 0.05))
            if ready:
                conn, _ = self._listener.accept()
                conn.setblocking(True)
                # One connection only: whoever connects later (student code) finds nothing.
                self._listener.close()
                self._listener = None
                self._conn = conn
                self._inner = FdChannel(conn.fileno(), conn.fileno())
                return self._inner
            if self._gone.is_set():
                raise ChannelError("the sandbox exited before connecting")

    def send(self, message: Any) -> None:
        try:
            inner = self._connected(self._connect_timeout)
        except TimeoutError:
            raise ChannelError("the sandbox did not connect in time") from None
        inner.send(message)

    def recv(self, timeout: float) -> Any:
        started = time.monotonic()
        inner = self._connected(timeout)
        return inner.recv(max(timeout - (time.monotonic() - started), 0.0))

    def close(self) -> None:
        self._closed = True
        for s in (self._listener, self._conn):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._listener = self._conn = None


class OutputReader(threading.Thread):
    """Reads the multiplexed attach stream (8-byte frame headers: stream id,
    size) into two buffers under one cap. Sets `done` at EOF or when the cap
    is exceeded (`over`, then the rest is drained and dropped until EOF or
    stop()); never holds more than the cap."""

    def __init__(self, sock: socket.socket, cap: int, label: str) -> None:
        super().__init__(name=f"docker-output-{label}", daemon=True)
        self.sock = sock
        self.cap = cap
        self.bufs = {1: bytearray(), 2: bytearray()}
        self.over = False
        self.error: str | None = None
        self.done = threading.Event()
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def _read(self, n: int) -> bytes | None:
        out = bytearray()
        while len(out) < n:
            if self._halt.is_set():
                return None
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            chunk = self.sock.recv(min(n - len(out), 65536))
            if not chunk:
                return None
            out += chunk
        return bytes(out)

    def run(self) -> None:
        try:
            while True:
                header = self._read(8)
                if header is None:
                    return
                stream, size = header[0], struct.unpack(">I", header[4:])[0]
                while size:
                    chunk = self._read(min(size, 65536))
                    if chunk is None:
                        return
                    size -= len(chunk)
                    if self.over or stream not in self.bufs:
                        continue
                    room = self.cap - len(self.bufs[1]) - len(self.bufs[2])
                    self.bufs[stream] += chunk[: max(room, 0)]
                    if len(chunk) > room:
                        # Tell wait() to kill, but keep draining: podman's conmon
                        # blocks on a full attach socket and would not exit.
                        self.over = True
                        self.done.set()
        except OSError as exc:
            self.error = f"output stream: {exc}"
        finally:
            self.done.set()


class DockerSandbox(RunningSandbox):
    def __init__(self, backend: "DockerBackend", job: SandboxJob, cid: str, tmp: Path,
                 reader: OutputReader, attach: Any, channel: SocketChannel | None,
                 cgroup: JobCgroupParent | None, started: float, armed: bool = True) -> None:
        self.backend = backend
        self.job = job
        self.cid = cid
        self.tmp = tmp
        self.reader = reader
        self._attach = attach
        self.cgroup = cgroup
        self.started = started
        self._channel = channel
        if channel is not None:
            self.channel = channel
        self._killed = False
        self._released = False
        self._result: SandboxResult | None = None
        self._lock = threading.Lock()
        # The wall limit holds even when nobody is in wait() (interactive jobs).
        self._expired_at: float | None = None
        self._timer: Deadline | None = None
        self._cpu_base = 0.0
        self._init_pid: int | None = None
        self._init_fd = -1
        # An engine without memory limits: the host samples the job's memory.
        self.tree: TreeUsage | None = None
        if not backend.engine_limits and backend.local:
            pid = self.init_pid()
            self.tree = TreeUsage(pid) if pid is not None else None
        if armed:
            self.arm(backend.deadlines)

    def rebind(self, job: SandboxJob) -> None:
        """A pre-started (warm) sandbox becomes `job`'s: its clock starts now and
        the CPU time of its start-up is not charged to the job."""
        self.job = job
        self.started = time.monotonic()
        self.reader.cap = job.limits.output_bytes
        if self.cgroup is not None:
            self._cpu_base = self.cgroup.stats().get("cpu_s") or 0.0
        if self.tree is not None:
            self.tree.peak_mb = 0.0

    @property
    def proc(self) -> "DockerSandbox":
        return self  # WarmPool asks `sb.proc.poll()`: is it still running?

    def forget_after_fork(self) -> None:
        """In a forked child: this container is the parent's. Close this
        process's copies of its sockets (the parent's stay open) and never
        touch the container from here."""
        with self._lock:
            self._killed = self._released = True
        for s in (self._channel, self._attach):
            try:
                if s is not None:
                    s.close()
            except Exception:  # noqa: BLE001  (a fork hook must never fail)
                pass
        fd, self._init_fd = self._init_fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def pid(self) -> str:
        return self.cid[:12]  # for logs: the container stands for the process

    def poll(self) -> int | None:
        return 0 if self.reader.done.is_set() or self._killed else None

    def _expire(self) -> None:
        if self._killed or self.reader.done.is_set():
            return
        self._expired_at = time.monotonic()
        try:
            self._stop_now()
        except Exception as exc:  # noqa: BLE001  (wait()/kill() remove it anyway)
            log.warning("docker_expire_kill_failed", container=self.cid[:12], error=str(exc)[:200])

    def init_pid(self) -> int | None:
        """The host pid of the container's init, when the engine runs on this
        kernel (asked once; None elsewhere, e.g. Docker Desktop's VM). Its
        name is checked (a pid of another kernel must never be signalled)
        and it is held as a pidfd (a recycled pid is never signalled)."""
        if self._init_pid is None and self.backend.local:
            self._init_pid = 0
            pid = self.backend.api.inspect_container(self.cid).get("State", {}).get("Pid")
            if isinstance(pid, int) and pid > 0:
                try:
                    fd = os.pidfd_open(pid)
                    with open(f"/proc/{pid}/comm", "rb") as fh:
                        name = fh.read().strip()
                except OSError:
                    return None
                if name in INIT_NAMES:
                    self._init_pid, self._init_fd = pid, fd
                else:
                    os.close(fd)
        return self._init_pid or None

    def _stop_now(self) -> None:
        """SIGKILL the container at once: its init directly when the engine is
        local (the container's pid namespace goes with it: milliseconds),
        else through the engine (podman takes ~0.3 s to answer a kill)."""
        if self.init_pid() is not None:
            try:
                signal.pidfd_send_signal(self._init_fd, signal.SIGKILL)
                return
            except ProcessLookupError:  # exited already
                return
            except OSError:  # not ours to signal (EPERM), or closed by _release meanwhile
                pass
        try:
            self.backend.api.kill(self.cid)
        except Exception:  # noqa: BLE001  (refused for a container that stopped meanwhile: fine)
            if self.backend.api.inspect_container(self.cid).get("State", {}).get("Running"):
                raise

    def kill(self) -> None:
        with self._lock:
            if self._killed:
                return
            self._killed = True
        self.backend._remove(self.cid)
        self.reader.stop()
        if self._channel is not None:
            self._channel.close()
        if self._result is None:
            # Killed without wait(): host-side leftovers go now (wait() does it otherwise).
            self._release()

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        if self._timer is not None:
            self._timer.cancel()
        try:
            self._attach.close()
        except Exception:  # noqa: BLE001  (best effort: the engine may be gone)
            pass
        if self.cgroup is not None:
            self.cgroup.remove()
        shutil.rmtree(self.tmp, ignore_errors=True)
        fd, self._init_fd = self._init_fd, -1
        if fd >= 0:
            os.close(fd)

    def _exited_state(self) -> dict[str, Any]:
        """The container's final state. The output stream has ended, so it has
        exited or is about to: polling inspect is much faster than the wait
        endpoint (podman's polls its own state every 250 ms)."""
        deadline = time.monotonic() + self.backend.api_timeout
        delay = 0.005
        while True:
            state = self.backend.api.inspect_container(self.cid).get("State", {})
            # Only a final state: podman has transient ones ("stopping") with no exit code yet.
            if not state.get("Running") and state.get("Status") in ("exited", "stopped", "dead"):
                return state
            if time.monotonic() > deadline:
                raise SandboxError("the container did not stop in time")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def wait(self, timeout: float | None = None) -> SandboxResult:
        if self._result is not None:
            return self._result
        limits = self.job.limits
        wall = limits.wall_s if timeout is None else min(timeout, limits.wall_s)
        deadline = self.started + wall
        killed_before = self._killed
        over_memory = False
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            if self.tree is None:
                finished = self.reader.done.wait(left)
                break
            finished = self.reader.done.wait(min(left, 0.1))
            if finished or left <= 0.1:
                break
            if self.tree.sample(limits.memory_mb)[0] > limits.memory_mb:
                over_memory = True
                break
        if self._timer is not None:
            self._timer.cancel()
        timed_out = (not finished and not over_memory or self._expired_at is not None) and not killed_before
        over = self.reader.over
        state: dict[str, Any] = {}
        error: str | None = None
        try:
            if (timed_out or over or over_memory) and not self._killed:
                self._stop_now()  # SIGKILL; the output stream ends with the container
            if not self._killed:
                state = self._exited_state()
        except Exception as exc:  # noqa: BLE001  (engine failure -> sandbox_error, never student)
            if not self._killed:
                error = str(_engine_error("collecting the result", exc))
        elapsed = (self._expired_at or time.monotonic()) - self.started
        # kill() from elsewhere (before or during this wait): the container is gone.
        killed_elsewhere = self._killed
        self.reader.stop()
        self.reader.join(timeout=1.0)
        stats = self.cgroup.stats() if self.cgroup is not None else {}
        self.kill()
        self._release()
        if self.reader.error and not (timed_out or over or error or self._killed and killed_before):
            error = self.reader.error
        code = state.get("ExitCode") if isinstance(state.get("ExitCode"), int) else None
        sig = None
        # The init process reports a child killed by signal N as 128+N.
        if code is not None and 128 < code < 128 + 65:
            code, sig = None, code - 128
        cpu_s = stats.get("cpu_s")
        if cpu_s is not None:
            cpu_s = max(cpu_s - self._cpu_base, 0.0)
        elif self.tree is not None and self.tree.cpu_s:
            cpu_s = self.tree.cpu_s   # no cgroup parent: the host's last sample of the job's processes
        peak = stats.get("peak_memory_mb")
        if self.tree is not None and self.tree.peak_mb:
            peak = max(peak or 0.0, self.tree.peak_mb)
        # cgroup v1 has no hierarchical OOM counter: a job whose cgroup tree reached
        # the memory limit and was SIGKILLed (or timed out: a forked process was
        # killed, the rest waited) hit the limit. v2 and Docker report it exactly.
        at_limit = self.cgroup is not None and peak is not None and peak >= 0.98 * limits.memory_mb
        oom = bool(state.get("OOMKilled") or stats.get("oom") or over_memory
                   or (at_limit and (sig == signal.SIGKILL or timed_out)))
        verdict = classify(limits, signal=sig, exit_code=code, cpu_s=cpu_s, over_output=over, oom=oom,
                           timed_out=timed_out, error=error, vanished=killed_elsewhere and not state)
        out, err = self.reader.bufs[1], self.reader.bufs[2]
        self._result = SandboxResult(
            verdict=verdict, exit_code=code, signal=sig,
            stdout=clean_text(bytes(out)), stderr=clean_text(bytes(err)),
            stdout_truncated=over, stderr_truncated=over, wall_s=elapsed,
            cpu_s=cpu_s, peak_memory_mb=peak, error=error,
        )
        if verdict == Verdict.sandbox_error:
            log.warning("docker_job_failed", label=self.job.label, error=error)
        return self._result


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, settings: Settings, *, api_timeout: float | None = None) -> None:
        docker = _import_docker()
        self.settings = settings
        self.image = settings.docker_image
        self.runtime = getattr(settings, "docker_runtime", None)
        self.url = engine_url(settings)
        self.api_timeout = float(api_timeout or getattr(settings, "docker_api_timeout_s", 10.0))
        self._docker = docker
        self.deadlines = Deadlines()  # every container's host-side wall clock, on one thread
        self._connect()
        # The daemon forks a child per job: a child must not share the parent's
        # pooled keep-alive connections (both would talk on one HTTP stream).
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (b := ref()) is not None and b._connect())
        self._types = docker.types
        # Engine facts, asked once by _engine().
        self._cgroup_v2: bool | None = None
        self._cgroups_usable: bool | None = None
        self._podman = False
        # Whether the engine enforces memory and pids limits (not a rootless
        # engine on cgroup v1), and runs on this kernel (its pids are ours to
        # read and signal).
        self.engine_limits = True
        self.local = False
        self._security_opt: list[str] = ["no-new-privileges"]
        self._seq = itertools.count()
        # runc cannot raise a hard limit above the engine's; ours is the best guess of it.
        hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        self._nproc = NPROC if hard == resource.RLIM_INFINITY else min(NPROC, hard)

    @property
    def owner(self) -> str:
        """The `xgrader.owner` label of containers this process starts."""
        return _owner()

    def _connect(self) -> None:
        try:
            self.client = self._docker.DockerClient(base_url=self.url, version=API_VERSION,
                                                    timeout=self.api_timeout)
        except Exception as exc:  # noqa: BLE001  (DockerException, bad URL...)
            raise _engine_error("connecting", exc) from None
        self.api = self.client.api

    def _engine(self) -> None:
        """Asked once: podman or Docker (how a seccomp profile is passed),
        whether per-job cgroup parents work (the cgroupfs driver, the engine on
        this host via a local socket, and us root), whether the engine
        enforces memory and pids limits, and whether it runs on this kernel."""
        if self._cgroups_usable is not None:
            return
        usable = False
        try:
            info = self.api.info()
            version = self.api.version()
            self._podman = any("podman" in str(c.get("Name", "")).lower()
                               for c in version.get("Components") or [])
            self._cgroup_v2 = str(info.get("CgroupVersion")) == "2"
            # In a container (the daemon image) /sys/fs/cgroup is read-only or another view.
            probe = CGROUP_ROOT if self._cgroup_v2 else CGROUP_ROOT / "memory"
            usable = (info.get("CgroupDriver") == "cgroupfs" and self.url.startswith("unix://")
                      and os.geteuid() == 0 and probe.is_dir() and os.access(probe, os.W_OK))
            self.engine_limits = self._enforces_limits(info)
            self.local = (sys.platform == "linux" and self.url.startswith("unix://")
                          and info.get("KernelVersion") == os.uname().release)
        except SandboxError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _engine_error("info", exc) from None
        self._cgroups_usable = usable
        profile = json.dumps(seccomp_profile(base_seccomp()), sort_keys=True)
        if self._podman:
            self._security_opt = ["no-new-privileges", f"seccomp={_profile_file(profile)}"]
        else:
            self._security_opt = ["no-new-privileges", f"seccomp={profile}"]
        (log.info if self.engine_limits else log.warning)("sandbox_limits", summary=self.limits_summary())

    def _enforces_limits(self, info: dict[str, Any]) -> bool:
        """A rootless engine enforces memory and pids limits only where its
        user has those cgroup controllers delegated (cgroup v2); podman
        lists them, Docker marks itself rootless and drops the limits."""
        if self._podman:
            try:
                host = self.api._result(self.api._get(self.api.base_url + "/v4.0.0/libpod/info"), True)["host"]
            except Exception:  # noqa: BLE001  (an older podman: assume it does)
                return True
            return {"memory", "pids"} <= set(host.get("cgroupControllers") or [])
        rootless = any("rootless" in str(o) for o in info.get("SecurityOptions") or [])
        return not rootless or (str(info.get("CgroupVersion")) == "2" and bool(info.get("MemoryLimit")))

    def limits_summary(self) -> str:
        """The limits in force and what is not enforced, in one line."""
        engine = "podman" if self._podman else "Docker"
        if self.engine_limits:
            accounting = ("a cgroup parent per job (CPU time, peak memory, OOM kills)" if self._cgroups_usable
                          else "no per-job cgroup parent here (no CPU time or peak memory reported)")
            return (f"docker backend on {engine} ({self.url}): the engine enforces memory+swap, pids, one CPU; "
                    f"rlimits: CPU time, file size, open files, no core dumps; {accounting}")
        sampled = "the job's total sampled every 0.1 s" if self.local else "no job total (the engine is not local)"
        return (f"docker backend on {engine} ({self.url}), rootless without cgroup limits: memory capped per "
                f"process (RLIMIT_DATA) and {sampled}, pids per uid across this engine's containers "
                "(RLIMIT_NPROC), CPU time per process; not enforced: a CPU quota, memory between two samples; "
                "for the engine's limits use cgroup v2 with the memory and pids controllers delegated")

    # -- jobs --------------------------------------------------------------------
    def _host_config(self, job: SandboxJob, tmp: Path, cgroup: JobCgroupParent | None) -> dict[str, Any]:
        lim = job.limits
        Ulimit = self._types.Ulimit
        # An engine that would only warn that it ignores them is not given them.
        memory = dict(mem_limit=f"{lim.memory_mb}m", memswap_limit=f"{lim.memory_mb}m", pids_limit=lim.pids,
                      nano_cpus=1_000_000_000) if self.engine_limits else {}
        return self.api.create_host_config(
            network_mode="none", **memory,
            read_only=True,
            tmpfs={"/tmp": f"rw,size={lim.tmp_mb}m,noexec,nosuid,nodev,mode=1777"},
            shm_size=f"{lim.tmp_mb}m",
            cap_drop=["ALL"], security_opt=self._security_opt,
            ulimits=[*(Ulimit(name=_ULIMIT_NAMES[res], soft=soft, hard=hard)
                       for res, (soft, hard) in rlimit_values(lim)),
                     # Per uid across the host, so not the job's bound (pids_limit is);
                     # explicit because the engine's default may exceed what runc may set.
                     Ulimit(name="nproc", soft=self._nproc, hard=self._nproc)],
            init=True,
            binds={str(tmp / "box"): {"bind": BOX, "mode": "ro"}},
            runtime=self.runtime or None,
            cgroup_parent=cgroup.path if cgroup is not None else None,
        )

    def _prepare(self, job: SandboxJob) -> tuple[Path, socket.socket | None]:
        # The parent stays 0700 (other host users cannot look in); only box/ is mounted.
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-{job.label[:40]}-", suffix=_host_suffix()))
        box = tmp / "box"
        files = box / "files"
        files.mkdir(parents=True)
        for name, data in job.files.items():
            target = files / safe_relpath(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (box / "stdin").write_bytes(job.stdin)
        listener = None
        if job.channel:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(box / "channel.sock"))
            listener.listen(1)
        # The job runs as 65534: it must read (never write) everything in box/.
        for root, dirs, names in os.walk(box):
            os.chmod(root, 0o755)
            for n in names:
                os.chmod(os.path.join(root, n), 0o666 if n == "channel.sock" and root == str(box) else 0o644)
        return tmp, listener

    def start(self, job: SandboxJob) -> RunningSandbox:
        return self._launch(job, armed=True)

    @property
    def warmable(self) -> bool:
        """Whether prestart() can work here (make_backend wraps in a WarmPool then)."""
        try:
            self._engine()
        except SandboxError:
            return False
        return bool(self._cgroups_usable)

    # -- warm start (xgrader.backends.warm.WarmPool) ---------------------------------
    def prestart(self, template: SandboxJob) -> DockerSandbox:
        """A container started for `template` (the runner waiting on its channel,
        no files) whose wall clock does not run until :meth:`activate`. Needs
        the per-job cgroup parent: memory and pids limits change on activation."""
        self._engine()
        if not self._cgroups_usable:
            raise SandboxError("warm containers need the cgroupfs driver on this host")
        return self._launch(template, armed=False)

    def activate(self, sandbox: DockerSandbox, job: SandboxJob) -> None:
        """Make a pre-started container `job`'s. Rlimits and the tmpfs size were
        fixed at start and must already be the job's (the pool keys by them)."""
        from xgrader.backends.process import rlimit_key  # noqa: PLC0415
        if sandbox.cgroup is None:
            raise SandboxError("warm container without a cgroup parent")
        if rlimit_key(sandbox.job.limits) != rlimit_key(job.limits):
            raise SandboxError("warm container started with other rlimits or tmpfs size")
        try:
            sandbox.cgroup.set_container_limits(sandbox.cid, job.limits)
        except OSError as exc:  # e.g. a memory limit below what the idle runner uses
            raise SandboxError(f"cannot set the warm container's limits: {exc}") from None
        sandbox.rebind(job)
        sandbox.arm(self.deadlines)

    def _launch(self, job: SandboxJob, armed: bool) -> DockerSandbox:
        env = {"PATH": BASE_PATH, "LANG": "C.UTF-8", **job.env}
        if job.channel:
            env["XGRADER_CHANNEL"] = f"unix:{CHANNEL_SOCK}"
        # The grading image's site dirs (course packages): the runner runs with -S
        # and appends them to sys.path itself (no .pth, no sitecustomize).
        env.setdefault("SANDBOX_SITE_DIRS", IMAGE_SITE_DIRS)
        try:
            tmp, listener = self._prepare(job)
        except SandboxError:
            raise
        except OSError as exc:
            raise SandboxError(f"cannot prepare the job folder: {exc}") from None
        cid: str | None = None
        attach = None
        cgroup = None
        try:
            self._engine()
            if self._cgroups_usable:
                cgroup = JobCgroupParent(
                    f"{CGROUP_PREFIX}{os.getpid()}-{_safe(job.label)}-{next(self._seq)}", bool(self._cgroup_v2))
            prologue = PROLOGUE if self.engine_limits else _rlimit_prologue(job.limits) + PROLOGUE
            container = self.api.create_container(
                self.image, command=["/bin/sh", "-c", prologue, "sh", *job.argv],
                user=SANDBOX_USER, environment=env, working_dir="/tmp", hostname="sandbox",
                network_disabled=True, labels={LABEL: job.label, OWNER: _owner()},
                host_config=self._host_config(job, tmp, cgroup), stdin_open=False, tty=False,
            )
            cid = container["Id"]
            # Attached before start: the stream carries everything from the first byte.
            attach = self.api.attach_socket(cid, params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 0})
            sock = getattr(attach, "_sock", attach)
            reader = OutputReader(sock, job.limits.output_bytes, job.label)
            reader.start()
            started = time.monotonic()
            self.api.start(cid)
        except Exception as exc:  # noqa: BLE001  (engine/API failures are infrastructure)
            if listener is not None:
                listener.close()
            if cid is not None:
                self._remove(cid)
            if attach is not None:
                try:
                    attach.close()
                except Exception:  # noqa: BLE001
                    pass
            if cgroup is not None:
                cgroup.remove()
            shutil.rmtree(tmp, ignore_errors=True)
            raise _engine_error("starting the container", exc) from None
        log.debug("docker_started", label=job.label, container=cid[:12])
        channel = None
        if listener is not None:
            channel = SocketChannel(listener, reader.done, job.limits.wall_s)
        return DockerSandbox(self, job, cid, tmp, reader, attach, channel, cgroup, started, armed=armed)

    def _remove(self, cid: str) -> None:
        """Force-remove (kills first). A container caught mid-exit can be refused
        (409/500, state improper): retried with back-off for ~1.5 s, then logged
        (cleanup_stale removes it once its owner is gone). An engine that does
        not answer is not retried: one API timeout is the most this waits."""
        delay = 0.05
        for attempt in range(6):
            try:
                self.api.remove_container(cid, force=True, v=True)
                return
            except Exception as exc:  # noqa: BLE001
                status = getattr(exc, "status_code", None)
                if status == 404:
                    return
                # No answer (timeout, connection refused): do not multiply the wait;
                # kill_label/cleanup_stale remove it once the engine is back.
                if attempt == 5 or status is None:
                    log.warning("docker_remove_failed", container=cid[:12], error=str(exc)[:200])
                    return
                log.debug("docker_remove_retry", container=cid[:12], error=str(exc)[:200])
                time.sleep(delay)
                delay *= 2

    # -- housekeeping -----------------------------------------------------------
    def _labelled(self, *filters: str) -> list[dict[str, Any]]:
        try:
            return self.api.containers(all=True, filters={"label": list(filters)})
        except Exception as exc:  # noqa: BLE001
            raise _engine_error("listing containers", exc) from None

    def kill_label(self, label: str) -> None:
        """Remove the label's containers, then what the (SIGKILLed) job process
        left on the host: its folders and cgroup parents (their creator is dead)."""
        for c in self._labelled(f"{LABEL}={label}"):
            self._remove(c["Id"])
        # A warm container keeps the label it was started with ("warm"): the
        # killed job's one is found by its dead owner.
        self.cleanup_stale()

    def cleanup_stale(self) -> None:
        """Remove containers and folders whose starting process on this host is
        gone (a crashed predecessor or a killed job child); live jobs stay."""
        host = socket.gethostname()
        for c in self._labelled(OWNER):
            owner = (c.get("Labels") or {}).get(OWNER, "")
            name, _, pid = owner.rpartition(":")
            if name == host and pid.isdigit() and not pid_alive(int(pid)):
                self._remove(c["Id"])
        self._cleanup_host()

    def _cleanup_host(self) -> None:
        v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
        pattern = f"{CGROUP_PREFIX}*" if v2 else f"*/{CGROUP_PREFIX}*"
        for path in CGROUP_ROOT.glob(pattern):
            pid = path.name[len(CGROUP_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                JobCgroupParent(path.name, v2).remove()
        own = _host_suffix()
        for path in Path(tempfile.gettempdir()).glob(TMP_PREFIX + "*"):
            pid = path.name[len(TMP_PREFIX):].split("-", 1)[0]
            other_host = re.search(r"\.h[0-9a-f]{6}$", path.name) is not None and not path.name.endswith(own)
            if pid.isdigit() and not other_host and not pid_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)

    def check(self) -> None:
        """The engine answers and has the grading image. Also (cheap, host only)
        removes the folders and cgroup parents of job processes that are gone:
        the daemon's parent runs this periodically, and a job child's
        background cgroup removal dies with the child."""
        self._cleanup_host()
        try:
            self.api.ping()
            self._engine()
            image = self.api.inspect_image(self.image)
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "status_code", None) == 404:
                raise SandboxError(f"grading image {self.image} not found: run sandbox/image/build.sh") from None
            raise _engine_error(f"ping {self.url}", exc) from None
        # The image bakes in the runner: a stale one speaks an older protocol.
        labels = (image.get("Config") or {}).get("Labels") or {}
        runner_dir = Path(getattr(self.settings, "runner_dir", ""))
        if "xgrader.runner" in labels and (runner_dir / "runner.py").is_file():
            current = runner_digest(runner_dir)
            if labels["xgrader.runner"] != current:
                log.warning("docker_image_stale", image=self.image, image_runner=labels["xgrader.runner"],
                            runner=current, fix="sandbox/image/build.sh")

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass
