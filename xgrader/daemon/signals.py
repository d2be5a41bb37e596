"""Signals only set flags, here and nowhere else.

The handlers count SIGTERM/SIGINT; the loop reads the count. A wake-up pipe
(signal.set_wakeup_fd) lets the loop's select() return at once on any signal,
including SIGCHLD when a child exits.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field


@dataclass
class StopFlags:
    """How many stop signals arrived: 1 = drain, 2+ = kill children now."""

    count: int = 0
    last_signal: int | None = None

    @property
    def draining(self) -> bool:
        return self.count >= 1

    @property
    def hard_stop(self) -> bool:
        return self.count >= 2


@dataclass
class SignalState:
    flags: StopFlags = field(default_factory=StopFlags)
    wake_r: int = -1
    wake_w: int = -1
    _previous: dict[int, object] = field(default_factory=dict)
    _previous_wakeup: int = -1

    def install(self) -> "SignalState":
        """Install handlers (main thread only)."""
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self._previous_wakeup = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

        def on_stop(signum: int, _frame: object) -> None:
            self.flags.count += 1
            self.flags.last_signal = signum

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, on_stop)
        # A Python-level handler is what makes SIGCHLD hit the wake-up fd.
        self._previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)
        return self

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
        signal.set_wakeup_fd(self._previous_wakeup)
        for fd in (self.wake_r, self.wake_w):
            if fd >= 0:
                os.close(fd)
        self.wake_r = self.wake_w = -1


def reset_in_child() -> None:
    """A forked child must not run the parent's handlers or write its wake-up pipe.
    SIGTERM kills it plainly; SIGINT from a terminal cannot reach it (own group)."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
