"""Warm pool: sandboxes pre-started before a job needs them, each used once.

A warm sandbox is a bwrap sandbox whose runner (sandbox/runner.py, serve mode)
is already up and blocked on its channel, with no files and no job. A job
that would start exactly that (the runner in serve mode with a channel: every
StudentRunner start and restart) with the same rlimits and tmpfs size (fixed
when a sandbox starts: the backend's warm_key, process.rlimit_key) takes one
instead: the backend sets the job's cgroup limits (memory, pids, CPU quota;
without cgroups those are rlimits too, part of the key), starts the job's
wall clock, and the job's files go in through the runner's `files` op. Only
then can student code run. The sandbox is never given back: nothing a
submission did can reach the next one. The pool starts a replacement in the
background. Jobs it cannot serve (other argv or env, large files, an empty
pool) start cold, as without a pool. The pool pre-starts for the operator's
default limits; an eligible job with another key switches it to that key.

Process ownership (the daemon forks a child per job): sandboxes belong to the
process, and the thread, that started them (bwrap --die-with-parent follows
the starting *thread*, so one long-lived filler thread starts them all). A
forked child cannot use its parent's sandboxes (it cannot wait() for them and
the parent would hand them out again), so after a fork the pool forgets the
parent's sandboxes and fills anew in the child: right after a plain
os.fork() (the supervisor's per-job fork; not subprocess's fork-then-exec),
so the sandbox starts while the child waits for or parses its submission
(the daemon turns that off, `prewarm_after_fork`, and calls prewarm() only
in children forked ahead of their job).
A forked child grades one submission, so it starts exactly ONE sandbox
(`FORK_BUDGET`) and never refills: a replacement would be thrown away with
the child. The daemon's parent never starts a job, hence never fills (the
first start() or :meth:`WarmPool.prewarm` fills in any process). A child
that did not use its sandbox discards it (:meth:`WarmPool.drop_idle`);
one killed takes it along (--die-with-parent) and leaves cgroups that
check() and kill_label() remove (their creator pid is dead).
"""

from __future__ import annotations

import base64
import contextlib
import os
import sys
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

import structlog

from xgrader.backends.base import Backend, ChannelError, RunningSandbox, SandboxError, SandboxJob
from xgrader.backends.process import ProcessSandbox, rlimit_key

if TYPE_CHECKING:
    from xgrader.config import Settings

log = structlog.get_logger(__name__)

PING_ID = -1
FILES_ID = -2
# The runner refuses lines over 4 MiB; files bigger than this go cold.
MAX_WARM_FILE_BYTES = 2 * 1024 * 1024
READY_TIMEOUT_S = 10.0
# Sandboxes a forked (one-submission) child pre-starts in all.
FORK_BUDGET = 1


class WarmPool(Backend):
    """Wraps a backend with prestart()/activate() (bwrap); keeps `size` idle
    sandboxes for the runner-serve template. Everything else is delegated."""

    def __init__(self, inner: Any, size: int, settings: Settings | None = None) -> None:
        if not hasattr(inner, "prestart") or not hasattr(inner, "activate"):
            raise SandboxError(f"backend {inner.name} has no warm start")
        self.inner = inner
        self.name = inner.name
        self.peer_channels = inner.peer_channels
        self.size = size
        # What a sandbox fixes when it starts: it serves only jobs with the same key.
        self._key = getattr(inner, "warm_key", rlimit_key)
        limits = settings.limits_for(None) if settings is not None else SandboxJob(argv=["x"]).limits
        self.template = SandboxJob(argv=inner.python_argv(), channel=True, limits=limits, label="warm")
        self.hits = 0
        self.misses = 0
        self._reset()
        ref = weakref.ref(self)
        # Fill right after a plain os.fork() (the daemon's per-job child), so the
        # sandbox starts while the child parses and fetches; never in the child
        # of a subprocess spawn, which is about to exec.
        self.prewarm_after_fork = True
        self._forking = threading.local()
        os.register_at_fork(before=lambda: (p := ref()) is not None and p._before_fork(),
                            after_in_child=lambda: (p := ref()) is not None and p._after_fork())

    # -- state per owning process ---------------------------------------------
    def _reset(self) -> None:
        self._owner = os.getpid()
        self._cv = threading.Condition()
        self._idle: deque[ProcessSandbox] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._budget: int | None = None   # starts left; None: refill for ever
        self._dropped = False              # drop_idle(): keep nothing from now on
        self._starting = False             # the filler is starting one right now

    def _before_fork(self) -> None:
        """In the forking thread: is this os.fork() itself, or subprocess's
        fork-then-exec (which runs these hooks too when it has a preexec_fn)?"""
        frame = sys._getframe(1)
        spawn = False
        while frame is not None:
            if frame.f_code.co_name == "_execute_child":
                spawn = True
                break
            frame = frame.f_back
        self._forking.plain = not spawn

    def _after_fork(self) -> None:
        """In a forked child (also a subprocess child before exec): the
        parent's idle sandboxes are not ours. Close our copies of their
        descriptors (cheap, fork-safe) and start over. After a plain
        os.fork() the child starts filling its own pool at once."""
        plain = getattr(self._forking, "plain", False)
        self._forking.plain = False
        for sb in self._idle:
            # Closed through their objects: a bare os.close() would leave objects
            # that close a reused descriptor number when collected later. A
            # backend's sandbox may offer forget_after_fork() instead.
            try:
                forget = getattr(sb, "forget_after_fork", None)
                if callable(forget):
                    forget()
                    continue
                for name in ("stdin", "stdout", "stderr"):
                    f = getattr(sb.proc, name, None)
                    if f is not None:
                        f.close()
                ch = getattr(sb, "_channel", None)
                if ch is not None:
                    ch.close()
            except Exception:  # noqa: BLE001 - a hook must never break the child
                pass
        closed = self._closed
        self._reset()
        self._closed = closed  # a pool closed in the parent stays closed
        self._budget = FORK_BUDGET
        if plain and self.prewarm_after_fork and not closed:
            self.prewarm()

    def prewarm(self) -> None:
        """Start filling now (in this process); returns at once."""
        with self._cv:
            if self._closed or self.size <= 0:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._fill, name="warm-pool", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def wait_ready(self, n: int | None = None, timeout: float = 10.0) -> bool:
        """Block until `n` (default: size) sandboxes are idle (benchmarks, tests)."""
        n = self.size if n is None else n
        self.prewarm()
        with self._cv:
            return self._cv.wait_for(lambda: len(self._idle) >= n or self._closed, timeout)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def _fill(self) -> None:
        failures = 0
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closed or len(self._idle) < self.size)
                if self._budget == 0:
                    # Spent; stay alive: bwrap --die-with-parent follows this thread.
                    self._cv.wait_for(lambda: self._closed or self._dropped)
                if self._closed or self._dropped:
                    return
                if self._budget is not None:
                    self._budget -= 1   # spent on the attempt: a failure is not retried
                self._starting = True
            try:
                sb = self._start_one()
            except Exception as exc:  # never let the filler die: its sandboxes would die with it
                with self._cv:
                    self._starting = False
                    self._cv.notify_all()
                failures += 1
                log.warning("warm_start_failed", error=str(exc)[:300], failures=failures)
                with self._cv:
                    self._cv.wait_for(lambda: self._closed or self._dropped, min(0.5 * failures, 10.0))
                continue
            failures = 0
            with self._cv:
                closed = self._closed or self._dropped
                # Started for a template that was replaced meanwhile: not usable.
                current = self._key(sb.job.limits) == self._key(self.template.limits)
                self._starting = False
                if current and not closed:
                    self._idle.append(sb)
                self._cv.notify_all()
            if closed:
                _discard(sb)
                return
            if not current:
                _discard(sb)

    def _start_one(self) -> ProcessSandbox:
        sb = self.inner.prestart(self.template)
        try:
            sb.channel.send({"op": "files", "files": {}, "id": PING_ID})
            while True:  # the runner is up and idle once it answers
                msg = sb.channel.recv(READY_TIMEOUT_S)
                if isinstance(msg, dict) and msg.get("id") == PING_ID:
                    break
            if not msg.get("ok"):
                raise SandboxError("warm runner refused the ping")
        except (ChannelError, TimeoutError, OSError) as exc:
            _discard(sb)
            raise SandboxError(f"warm sandbox did not come up: {exc}") from None
        except BaseException:
            _discard(sb)
            raise
        return sb

    # -- taking ------------------------------------------------------------------
    def _eligible(self, job: SandboxJob) -> bool:
        t = self.template
        return (job.channel and job.argv == t.argv and job.env == t.env and not job.stdin
                and sum(len(v) for v in job.files.values()) <= MAX_WARM_FILE_BYTES)

    def _take(self, job: SandboxJob) -> ProcessSandbox | None:
        if os.getpid() != self._owner:  # forked without the hook having run (defensive)
            self._after_fork()
        key = self._key(job.limits)
        stale: list[ProcessSandbox] = []
        found = None
        with self._cv:
            if key != self._key(self.template.limits):
                # Jobs now want other rlimits: pre-start for them from now on.
                self.template = self.template.model_copy(update={"limits": job.limits})
                stale, self._idle = list(self._idle), deque()
            elif not self._idle and self._starting:
                # One is almost up (a job child's prewarm): sooner than a cold start.
                self._cv.wait_for(lambda: self._idle or not self._starting or self._closed,
                                  READY_TIMEOUT_S)
            while self._idle:
                sb = self._idle.popleft()
                if sb.proc.poll() is None and self._key(sb.job.limits) == key:
                    found = sb
                    break
                stale.append(sb)
            self._cv.notify_all()  # the filler starts replacements
        for sb in stale:
            _discard(sb)
        if self._budget is None:  # a forked child never fills on demand: the job started cold
            self.prewarm()
        return found

    def start(self, job: SandboxJob) -> RunningSandbox:
        if self.size > 0 and self._eligible(job):
            sb = self._take(job)
            if sb is not None:
                try:
                    self.inner.activate(sb, job)
                    self._send_files(sb, job)
                    self.hits += 1
                    log.debug("warm_sandbox_taken", label=job.label, pid=sb.proc.pid)
                    return sb
                except (SandboxError, ChannelError, TimeoutError, OSError) as exc:
                    log.warning("warm_sandbox_failed", label=job.label, error=str(exc)[:300])
                    _discard(sb)
        self.misses += 1
        return self.inner.start(job)

    def _send_files(self, sb: ProcessSandbox, job: SandboxJob) -> None:
        if not job.files:
            return
        files = {name: base64.b64encode(data).decode() for name, data in job.files.items()}
        sb.channel.send({"op": "files", "files": files, "id": FILES_ID})
        timeout = min(job.limits.wall_s, READY_TIMEOUT_S)
        while True:
            msg = sb.channel.recv(timeout)
            if isinstance(msg, dict) and msg.get("id") == FILES_ID:
                break
        if not msg.get("ok"):
            raise SandboxError(f"warm sandbox refused the files: {str(msg.get('error'))[:200]}")

    # -- delegated -----------------------------------------------------------------
    def python_argv(self, *args: str) -> list[str]:
        return self.inner.python_argv(*args)

    def paired_cpu(self) -> contextlib.AbstractContextManager[int | None]:
        # Jobs the inner backend starts are pinned; one taken from the pool is not.
        return self.inner.paired_cpu()

    def check(self) -> None:
        self.inner.check()
        # The daemon's parent runs this periodically: reap the cgroups of job
        # children's pools (their creator died; see the module docstring).
        self.inner.cleanup_stale()

    def cleanup_stale(self) -> None:
        self.inner.cleanup_stale()

    def prepare(self) -> None:
        self.inner.prepare()

    def helpers(self) -> tuple:
        return self.inner.helpers()

    def kill_label(self, label: str) -> None:
        self.inner.kill_label(label)

    def drop_idle(self) -> None:
        """Discard this process's idle sandboxes (their cgroups too) and start
        no more: a forked child's pre-started sandbox its job did not take."""
        with self._cv:
            self._budget = 0
            self._dropped = True
            idle, self._idle = list(self._idle), deque()
            self._cv.notify_all()
            thread = self._thread
        if os.getpid() == self._owner:
            for sb in idle:
                _discard(sb)
            # A start in flight: the filler discards it once up. Wait for that:
            # a process exiting before bwrap has set --die-with-parent would
            # leave that sandbox running, reparented to init.
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=READY_TIMEOUT_S + 2)

    def close(self) -> None:
        """Kill the idle sandboxes and stop the filler (this process's only)."""
        with self._cv:
            self._closed = True
            idle, self._idle = list(self._idle), deque()
            self._cv.notify_all()
            thread = self._thread
        if os.getpid() == self._owner:
            for sb in idle:
                _discard(sb)
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=READY_TIMEOUT_S + 1)
        self.inner.close()


def _discard(sb: ProcessSandbox) -> None:
    sb.kill()
    try:
        sb.wait(timeout=1.0)
    except Exception as exc:  # cleanup must go on
        log.warning("warm_discard_failed", error=str(exc)[:200])
