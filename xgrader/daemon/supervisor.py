"""Fork one child per job, in its own process group, with a hard deadline.

The supervisor knows nothing about grading: it runs a function in a forked
child, collects the child's JSON-line messages, reaps it, and kills the whole
process tree of a child that overstays its deadline.

A child can also be forked *ahead* of its job (:meth:`Supervisor.spawn_ready`):
it waits on a pipe of its own while it prepares (e.g. pre-starts its
sandbox), and :meth:`Supervisor.assign` hands it the job bytes and starts its
deadline. Closing that pipe instead (:meth:`Supervisor.retire_ready`) lets it
clean up and exit without a job.

With a forker attached (:meth:`Supervisor.use_forker`, forker.py) the
children are forked by it instead of by this process: :meth:`spawn_job` and
:meth:`spawn_ready` ask it first and fork here only when it is gone. Its
children are supervised the same way; their exit statuses come from it.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import structlog
from pydantic import ValidationError

from xgrader.daemon import proctree
from xgrader.daemon.messages import ChildReport, Reporter
from xgrader.daemon.signals import reset_in_child
from xgrader.logs import clip

log = structlog.get_logger(__name__)

MAX_BUFFER = 256 * 1024   # a child's messages are small; more is garbage
PR_SET_PDEATHSIG = 1
ASSIGN_TIMEOUT_S = 5.0    # a ready child reads its job at once; a stuck one is replaced
MAX_JOB_BYTES = 64 * 1024 * 1024
KILLED = signal.SIGKILL   # os.waitstatus of a child killed by SIGKILL

ChildFn = Callable[[Reporter], None]
ReadyFn = Callable[[Reporter, bytes], None]


@dataclass
class ChildHandle:
    pid: int
    fd: int
    label: str
    started: float
    deadline: float
    context: Any = None                  # the caller's (the loop keeps its pull here)
    report: ChildReport | None = None
    exit_status: int | None = None       # os.waitstatus
    killed_for: str | None = None        # "timeout" | "shutdown"
    finished: float | None = None
    job_fd: int | None = None            # ready child: the pipe its job comes through
    assigned: bool = True                # False: a ready child still waiting for a job
    forker: Any = None                   # the ForkerClient that forked it (None: this process did)
    _buf: bytearray = field(default_factory=bytearray)

    @property
    def exit_code(self) -> int | None:
        if self.exit_status is None:
            return None
        return os.waitstatus_to_exitcode(self.exit_status)


def die_with_parent(parent: int) -> None:
    """A SIGKILLed daemon must not leave children that post late: the
    re-served submission belongs to the next grader (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class Supervisor:
    def __init__(self, on_kill: Callable[[ChildHandle], None] | None = None) -> None:
        self.children: dict[int, ChildHandle] = {}
        self._on_kill = on_kill
        self.forkers: list[Any] = []     # ForkerClient; the last one takes new children

    # -- the forker ------------------------------------------------------------
    def use_forker(self, forker: Any) -> None:
        """New children come from `forker`; an earlier one is retired (closed
        once the children it forked are reaped)."""
        for old in self.forkers:
            old.retiring = True
        self.forkers.append(forker)
        self._close_idle_forkers()

    def _forker(self) -> Any:
        last = self.forkers[-1] if self.forkers else None
        return last if last is not None and last.alive and not last.retiring else None

    def _close_idle_forkers(self) -> None:
        for f in list(self.forkers):
            if (f.retiring or not f.alive) and not any(h.forker is f for h in self.children.values()):
                f.close()
                self.forkers.remove(f)

    def close_forkers(self) -> None:
        """At the end: every forker exits (its socket closes) and is reaped."""
        for f in self.forkers:
            f.close()
        self.forkers = []

    def spawn_job(self, job: bytes, local: ChildFn, *, timeout: float, label: str,
                  context: Any = None) -> ChildHandle:
        """A child for `job`: forked by the forker (which runs the job it was
        started with on these bytes), else here, running `local`."""
        handle = self._from_forker(label, prepare=False)
        if handle is not None and self.assign(handle, job, timeout=timeout, label=label, context=context):
            return handle
        # No forker, or its child could not take the job (killed by assign; reaped by poll()).
        return self.spawn(local, timeout=timeout, label=label, context=context)

    def _from_forker(self, label: str, *, prepare: bool) -> ChildHandle | None:
        """A child forked by the forker, waiting for its job on its own pipe
        (no deadline until assign()); None when there is no usable forker."""
        forker = self._forker()
        if forker is None:
            return None
        r, w = os.pipe()
        jr, jw = os.pipe()
        pid = forker.spawn(w, jr, prepare=prepare)
        os.close(jr)
        if pid is None:
            for fd in (r, w, jw):
                os.close(fd)
            return None
        handle = self._register(pid, r, w, label=label, timeout=float("inf"))
        handle.job_fd = jw
        handle.assigned = False
        handle.forker = forker
        return handle

    def __len__(self) -> int:
        return len(self.children)

    # -- spawning ------------------------------------------------------------
    def spawn(self, fn: ChildFn, *, timeout: float, label: str, context: Any = None) -> ChildHandle:
        r, w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # child: never returns
            code = 0
            try:
                os.close(r)
                self.drop_inherited()
                os.setpgid(0, 0)
                reset_in_child()
                die_with_parent(parent)
                fn(Reporter(w))
            except BaseException:  # noqa: BLE001 - the parent sees the exit status
                code = 1
            finally:
                os._exit(code)
        return self._register(pid, r, w, label=label, timeout=timeout, context=context)

    def spawn_ready(self, fn: ReadyFn, *, label: str, prepare: Callable[[], None] | None = None) -> ChildHandle:
        """Fork a child now that runs prepare() at once, then fn(reporter, job)
        once assign() gives it its job; no deadline until then. Retired (or
        the parent gone) it calls fn with an empty job, to clean up. With a
        forker, the forker forks it (running its own prepare and job function)."""
        handle = self._from_forker(label, prepare=prepare is not None)
        if handle is not None:
            return handle
        r, w = os.pipe()
        jr, jw = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # child: never returns
            code = 0
            try:
                os.close(r)
                os.close(jw)
                self.drop_inherited()
                os.setpgid(0, 0)
                reset_in_child()
                die_with_parent(parent)
                if prepare is not None:
                    prepare()
                job = _read_all(jr)
                os.close(jr)
                fn(Reporter(w), job)  # an empty job: retired, fn cleans up
            except BaseException:  # noqa: BLE001 - the parent sees the exit status
                code = 1
            finally:
                os._exit(code)
        os.close(jr)
        handle = self._register(pid, r, w, label=label, timeout=float("inf"))
        handle.job_fd = jw
        handle.assigned = False
        return handle

    def drop_inherited(self) -> None:
        """In a new child or a new forker: the other children's pipe ends and
        the forkers' sockets are the parent's (a ready child's job pipe, or an
        old forker's socket, held open here would never reach EOF)."""
        for handle in self.children.values():
            for fd in (handle.fd, handle.job_fd):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
        self.children = {}
        for f in self.forkers:
            try:
                f.sock.close()
            except OSError:
                pass
        self.forkers = []

    def ready(self) -> list[ChildHandle]:
        """Ready children still waiting for a job."""
        return [h for h in self.children.values() if not h.assigned and h.job_fd is not None]

    def assign(self, handle: ChildHandle, job: bytes, *, timeout: float, label: str, context: Any = None) -> bool:
        """Hand a ready child its job; its deadline starts now. False (and the
        child is killed) when it cannot take it: the caller forks afresh."""
        fd, handle.job_fd = handle.job_fd, None
        ok = fd is not None and not handle.assigned and _write_all(fd, job, ASSIGN_TIMEOUT_S)
        if fd is not None:
            os.close(fd)  # EOF: the job is complete
        if not ok:  # stays unassigned: reaped without a job, the caller forks afresh
            log.warning("ready_child_refused_job", pid=handle.pid)
            self.kill(handle, "refused")
            return False
        now = time.monotonic()
        handle.assigned = True
        handle.label, handle.context = label, context
        handle.started, handle.deadline = now, now + timeout
        return True

    def retire_ready(self) -> None:
        """Ready children exit without a job (after cleaning up); reaped by poll()."""
        for handle in self.ready():
            fd, handle.job_fd = handle.job_fd, None
            os.close(fd)
            handle.deadline = time.monotonic() + ASSIGN_TIMEOUT_S  # then killed

    def _register(self, pid: int, r: int, w: int, *, label: str, timeout: float,
                  context: Any = None) -> ChildHandle:
        try:
            os.setpgid(pid, pid)  # both sides set it: no race with an early kill
        except (PermissionError, ProcessLookupError):
            pass
        os.close(w)
        os.set_blocking(r, False)
        now = time.monotonic()
        handle = ChildHandle(pid=pid, fd=r, label=label, started=now, deadline=now + timeout, context=context)
        self.children[pid] = handle
        return handle

    # -- watching ------------------------------------------------------------
    def fds(self) -> list[int]:
        return [h.fd for h in self.children.values()] + [f.fileno() for f in self.forkers if f.alive]

    def next_deadline(self) -> float | None:
        pending = [h.deadline for h in self.children.values() if h.killed_for is None]
        return min(pending) if pending else None

    def poll(self) -> list[ChildHandle]:
        """Read messages, enforce deadlines, reap; returns children that finished."""
        for f in self.forkers:
            f.drain()  # exit statuses first: a reaped child is never signalled below
        now = time.monotonic()
        done: list[ChildHandle] = []
        for handle in list(self.children.values()):
            self._read(handle)
            if handle.killed_for is None and now >= handle.deadline:
                log.warning("child_deadline", pid=handle.pid, label=handle.label,
                            seconds=round(now - handle.started, 3))
                self.kill(handle, "timeout")
            if self._reap(handle):
                done.append(handle)
        if self.forkers:
            self._close_idle_forkers()
        return done

    def kill(self, handle: ChildHandle, reason: str) -> None:
        handle.killed_for = handle.killed_for or reason
        proctree.kill_tree(handle.pid)
        if self._on_kill is not None:
            try:
                self._on_kill(handle)
            except Exception:
                log.exception("child_kill_cleanup_failed", label=handle.label)

    def kill_all(self, reason: str) -> None:
        for handle in list(self.children.values()):
            if handle.exit_status is None:
                self.kill(handle, reason)

    def wait_all(self, timeout: float) -> list[ChildHandle]:
        """Reap everything (after kill_all); bounded."""
        end = time.monotonic() + timeout
        done: list[ChildHandle] = []
        while self.children and time.monotonic() < end:
            done.extend(self.poll())
            if self.children:
                time.sleep(0.01)
        return done

    # -- internals -----------------------------------------------------------
    def _read(self, handle: ChildHandle) -> None:
        while True:
            try:
                chunk = os.read(handle.fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                break
            if not chunk:
                break
            if len(handle._buf) + len(chunk) > MAX_BUFFER:
                log.error("child_message_overflow", pid=handle.pid, label=handle.label)
                handle._buf.clear()
                continue
            handle._buf += chunk
        while b"\n" in handle._buf:
            line, _, rest = bytes(handle._buf).partition(b"\n")
            handle._buf = bytearray(rest)
            self._message(handle, line)

    def _message(self, handle: ChildHandle, line: bytes) -> None:
        try:
            msg = json.loads(line)
            if "report" in msg:
                handle.report = ChildReport.model_validate(msg["report"])
            elif "events" in msg and handle.report is not None and isinstance(msg["events"], list):
                room = max(0, 1000 - len(handle.report.events))   # ChildReport.events' bound
                handle.report.events.extend(e for e in msg["events"][:room] if isinstance(e, list))
        except (ValueError, AttributeError, ValidationError) as exc:
            log.error("child_message_invalid", pid=handle.pid, label=handle.label, error=clip(exc, 200))

    def _reap(self, handle: ChildHandle) -> bool:
        if handle.forker is not None:
            return self._reap_forked(handle)
        try:
            # Peek without reaping: the group id stays ours until we reap.
            info = os.waitid(os.P_PID, handle.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = True  # already gone (should not happen): treat as exited
        if info is None:
            return False
        # Whatever the child left running in its group goes with it.
        try:
            os.killpg(handle.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            _, status = os.waitpid(handle.pid, 0)
        except ChildProcessError:
            status = 255 << 8
        self._done(handle, status)
        return True

    def _reap_forked(self, handle: ChildHandle) -> bool:
        """A child of the forker: it reaped it (its group killed first) and
        sent the status. A forker gone took its children along (PDEATHSIG):
        they count as killed, and their sandboxes are cleaned up by label."""
        forker = handle.forker
        status = forker.exits.pop(handle.pid, None)
        if status is None:
            if forker.alive:
                return False
            status = int(KILLED)
            if handle.killed_for is None and self._on_kill is not None:
                try:
                    self._on_kill(handle)
                except Exception:
                    log.exception("child_kill_cleanup_failed", label=handle.label)
        self._done(handle, status)
        return True

    def _done(self, handle: ChildHandle, status: int) -> None:
        handle.exit_status = status
        handle.finished = time.monotonic()
        self._read(handle)  # what it wrote before exiting is still in the pipe
        os.close(handle.fd)
        if handle.job_fd is not None:
            os.close(handle.job_fd)
            handle.job_fd = None
        del self.children[handle.pid]


def _read_all(fd: int) -> bytes:
    """The job, up to EOF (blocking: the parent writes it whole, then closes)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_JOB_BYTES:
            raise ValueError("job too large")
        chunks.append(chunk)


def _write_all(fd: int, data: bytes, timeout: float) -> bool:
    """Write everything within `timeout`; False if the reader is gone or stuck."""
    os.set_blocking(fd, False)
    view = memoryview(data)
    end = time.monotonic() + timeout
    try:
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                left = end - time.monotonic()
                if left <= 0 or not select.select([], [fd], [], left)[1]:
                    return False
    except OSError:  # EPIPE: the child died
        return False
    return True
