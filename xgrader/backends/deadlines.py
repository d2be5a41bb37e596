"""Sandboxes' host-side wall clocks on one thread per backend.

Every running sandbox has a wall-clock limit the host enforces even when
nobody waits on it (RunningSandbox.arm). A timer thread per sandbox costs a
thread's start and end per job (a pytest-kind submission starts two); one
thread per backend keeps a heap of deadlines instead and calls each expired
one's callback (the sandbox's kill). A cancelled deadline stays in the heap
and is dropped when it comes up.

A process forked from one that used it (the daemon's job children) gets a
fresh heap and thread on first use: the parent's thread does not exist there.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from typing import Callable

import structlog

log = structlog.get_logger()


class Deadline:
    """One armed deadline; cancel() before it passes and nothing is called."""

    __slots__ = ("cancelled", "fn")

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Deadlines:
    def __init__(self) -> None:
        self._pid = -1
        self._seq = itertools.count()

    def _fresh(self) -> None:
        """New state for this process (first use, or first use after a fork)."""
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Deadline]] = []
        self._thread = threading.Thread(target=self._run, name="xgrader-deadlines", daemon=True)
        self._thread.start()

    def at(self, when: float, fn: Callable[[], None]) -> Deadline:
        """Call `fn` (on the deadline thread) at time.monotonic() `when`."""
        if self._pid != os.getpid():
            self._fresh()
        deadline = Deadline(fn)
        with self._cond:
            first = not self._heap or when < self._heap[0][0]
            heapq.heappush(self._heap, (when, next(self._seq), deadline))
            if first:  # the thread sleeps until the old first one: wake it to wait less
                self._cond.notify()
        return deadline

    def _run(self) -> None:
        cond, heap = self._cond, self._heap
        while True:
            due: list[Deadline] = []
            with cond:
                while heap and heap[0][2].cancelled:
                    heapq.heappop(heap)
                if not heap:
                    cond.wait()
                    continue
                now = time.monotonic()
                while heap and heap[0][0] <= now:
                    due.append(heapq.heappop(heap)[2])
                if not due:
                    cond.wait(heap[0][0] - now)
                    continue
            for deadline in due:
                if deadline.cancelled:
                    continue
                try:
                    deadline.fn()
                except Exception as exc:  # noqa: BLE001  (one sandbox's kill failing must not stop the others')
                    log.error("deadline_callback_failed", error=f"{type(exc).__name__}: {exc}"[:300])
