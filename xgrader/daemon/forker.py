"""The forker: job children forked from a frozen copy of the daemon.

Forking the daemon's parent for every job makes the parent pay twice: the
fork copies its page tables (~1.4 ms for ~50 MB), and while a child lives
every page the parent writes is copied first (~800 faults per job, the
parent runs the HTTP loop meanwhile). The forker is a fork of the parent
made once, after the grading path is loaded and the client logged in: it
forks the job children on request, so the parent shares no pages with any
job child. The forker itself only waits on its socket; the pages it shares
with its children stay untouched, as they were in the parent.

The children are the forker's, not the parent's. The forker reaps them
(after killing whatever is left in the child's process group, as
Supervisor._reap does for its own) and reports each exit status; the
parent reads their reports over the pipes it created, enforces their
deadlines and kills their trees, exactly as for children it forked itself
(supervisor.py). The forker dies with the parent (PDEATHSIG) and its
children die with it; the parent then treats them as killed and forks
its own children again.

Protocol, on a SOCK_SEQPACKET pair (one small JSON message per datagram):
  parent -> forker: {"prepare": bool} with fds [report w, job r]: fork a
                    child that runs prepare() if asked, reads its job from
                    the job pipe to EOF (the parent writes it after the
                    answer: a job of any size) and runs it
  forker -> parent: {"pid": N}  (the answer to each request, in order; -1: fork failed)
                    {"exit": N, "status": S}  (os.waitstatus of a reaped child)
EOF on either side: the other side is gone.
"""

from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import time
from typing import Callable

import structlog

from xgrader.daemon.messages import Reporter
from xgrader.logs import clip

log = structlog.get_logger(__name__)

ANSWER_TIMEOUT_S = 5.0    # a fork answers in milliseconds; longer means a stuck forker

RunJob = Callable[[Reporter, bytes], None]


class ForkerClient:
    """The parent's end: spawn requests, and the exit statuses that came back."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.alive = True
        self.retiring = False              # replaced: closed once its children are reaped
        self.exits: dict[int, int] = {}    # child pid -> os.waitstatus, until the supervisor reaps it

    def fileno(self) -> int:
        return self.sock.fileno() if self.alive else -1

    def spawn(self, report_w: int, job_r: int, prepare: bool) -> int | None:
        """A new child's pid, or None when the forker is gone or stuck (the
        caller forks the child itself). The fds stay the caller's to close;
        the child reads its job from `job_r` to EOF."""
        if not self.alive or self.retiring:
            return None
        try:
            self.sock.sendmsg([json.dumps({"prepare": prepare}).encode()],
                              [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                array.array("i", [report_w, job_r]).tobytes())])
        except OSError as exc:
            self._lost(f"send: {exc}")
            return None
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while self.alive:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                # Stuck: end it, so its children go too (PDEATHSIG) and none
                # outlives the parent's view of it as killed.
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._lost("no answer")
                return None
            msg = self._read_one()
            if msg is not None and "pid" in msg:
                pid = int(msg["pid"])
                return pid if pid > 0 else None
        return None

    def drain(self) -> None:
        """Collect exit statuses without blocking."""
        while self.alive:
            try:
                if not select.select([self.sock], [], [], 0)[0]:
                    return
            except (OSError, ValueError):
                self._lost("socket closed")
                return
            self._read_one()

    def _read_one(self) -> dict | None:
        try:
            data = self.sock.recv(4096)
        except OSError as exc:
            self._lost(f"recv: {exc}")
            return None
        if not data:
            self._lost("exited")
            return None
        try:
            msg = json.loads(data)
        except ValueError:
            log.error("forker_message_invalid", data=data[:100])
            return None
        if "exit" in msg:
            self.exits[int(msg["exit"])] = int(msg["status"])
        return msg

    def _lost(self, why: str) -> None:
        if self.alive:
            self.alive = False
            if not self.retiring:
                log.warning("forker_lost", pid=self.pid, reason=why)
            try:
                self.sock.close()
            except OSError:
                pass

    def close(self) -> None:
        """The forker exits on EOF (killing any child left, through PDEATHSIG);
        reap it so no zombie stays."""
        was_alive, self.alive = self.alive, False
        if was_alive:
            self.sock.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def start_forker(run_job: RunJob, prepare: Callable[[], None] | None,
                 on_start: Callable[[], None] | None = None) -> ForkerClient:
    """Fork the forker from this (the daemon's) process. `run_job(reporter,
    job_bytes)` runs a job in a child (empty bytes: a ready child retired
    without one); `prepare()` runs first in ready children; `on_start()` runs
    once in the forker (drop what it must not hold)."""
    from xgrader.daemon.supervisor import die_with_parent

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the forker: never returns
        code = 0
        try:
            ours.close()
            die_with_parent(parent)
            if on_start is not None:
                on_start()
            _serve(theirs, run_job, prepare)
        except BaseException:  # noqa: BLE001 - the parent sees EOF and forks its children itself
            code = 1
        finally:
            os._exit(code)
    theirs.close()
    log.info("forker_started", pid=pid)
    return ForkerClient(pid, ours)


def _serve(sock: socket.socket, run_job: RunJob, prepare: Callable[[], None] | None) -> None:
    from xgrader.daemon.signals import reset_in_child
    from xgrader.daemon.supervisor import _read_all, die_with_parent

    me = os.getpid()
    # Stop signals are the parent's to act on (it drains, then closes our socket).
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select below
    children: set[int] = set()
    while True:
        ready = select.select([sock, wake_r], [], [])[0]
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        _reap(sock, children)
        if sock not in ready:
            continue
        data, anc, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(2 * 4))
        if not data:
            return  # the parent is gone or done: our children go with us (PDEATHSIG)
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", payload[: len(payload) - len(payload) % 4]).tolist()
        try:
            request = json.loads(data)
            if len(fds) != 2:
                raise ValueError(f"{len(fds)} descriptors, not 2")
            pid = os.fork()
        except BaseException as exc:  # noqa: BLE001 - EAGAIN, ENOMEM, garbage: the parent forks itself
            log.warning("forker_fork_failed", error=clip(f"{type(exc).__name__}: {exc}", 200))
            pid = -1
            request = None
        if pid == 0:  # a job child: never returns
            code = 0
            try:
                sock.close()
                signal.set_wakeup_fd(-1)
                for fd in (wake_r, wake_w):
                    os.close(fd)
                os.setpgid(0, 0)
                reset_in_child()
                die_with_parent(me)
                if request.get("prepare") and prepare is not None:
                    prepare()
                job = _read_all(fds[1])
                os.close(fds[1])
                run_job(Reporter(fds[0]), job)
            except BaseException:  # noqa: BLE001 - the parent sees the exit status
                code = 1
            finally:
                os._exit(code)
        if pid > 0:
            try:
                os.setpgid(pid, pid)  # both sides set it: no race with an early kill
            except (PermissionError, ProcessLookupError):
                pass
            children.add(pid)
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"pid": pid}).encode())


def _reap(sock: socket.socket, children: set[int]) -> None:
    """Every exited child: what it left in its process group killed (the
    zombie still holds the group id), then reaped and reported."""
    while children:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None:
            return
        pid = info.si_pid
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = 255 << 8
        children.discard(pid)
        try:
            sock.send(json.dumps({"exit": pid, "status": status}).encode())
        except OSError:
            return
