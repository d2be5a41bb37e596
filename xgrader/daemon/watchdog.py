"""Outer watchdog: if the pull loop stops making progress, exit non-zero so
the process supervisor (systemd, k8s) restarts us."""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

import structlog

log = structlog.get_logger(__name__)

STALL_EXIT_CODE = 70  # EX_SOFTWARE


class StallWatchdog:
    def __init__(self, stall_timeout_s: float, exit_fn: Callable[[int], None] = os._exit) -> None:
        self.stall_timeout_s = stall_timeout_s
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._exit = exit_fn
        self._thread = threading.Thread(target=self._watch, name="xgrader-watchdog", daemon=True)

    def tick(self) -> None:
        self._last = time.monotonic()  # a float store is atomic under the GIL

    def start(self) -> "StallWatchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        interval = min(1.0, self.stall_timeout_s / 4)
        while not self._stop.wait(interval):
            stalled = time.monotonic() - self._last
            if stalled > self.stall_timeout_s:
                log.critical("loop_stalled", seconds=round(stalled, 1), limit=self.stall_timeout_s)
                self._exit(STALL_EXIT_CODE)
                return
