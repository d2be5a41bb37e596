"""What a handler needs besides the assignment and the submission's files."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Callable

from xgrader.backends.base import Backend, Limits
from xgrader.config import Settings
from xgrader.handlers.expected import ExpectedStore
from xgrader.hooks import Hooks
from xgrader.source import Source

# A submission's code is stopped at most this long after its wall_s ran out.
WATCHDOG_GRACE_S = 0.5
MIN_WAIT_S = 0.01


class StudentClock:
    """A submission's budget of running time (its wall_s), spent by every
    case, load and program it runs, whatever the kind does with them
    (restarts, one sandbox per program). Starting a sandbox is not charged:
    the student's code is not running then."""

    def __init__(self, budget_s: float) -> None:
        self._lock = threading.Lock()
        self._left = budget_s

    def remaining(self) -> float:
        with self._lock:
            return self._left

    def charge(self, seconds: float) -> None:
        with self._lock:
            self._left -= max(seconds, 0.0)

    def left(self, wanted: float) -> float:
        """`wanted`, cut to the budget left (at least MIN_WAIT_S, so a wait
        always ends and says so)."""
        return max(min(wanted, self.remaining()), MIN_WAIT_S)


@dataclass(frozen=True)
class GradeContext:
    settings: Settings
    backend: Backend
    hooks: Hooks
    limits: Limits          # the assignment's, clamped by the operator's ceilings
    store: ExpectedStore
    label: str = "job"
    submission_id: str = ""
    # Where sandboxes already killed put the rest of their teardown (waiting
    # for their exit, accounting, removing the cgroup) for the caller to run
    # once its reply is out (the daemon's child: after its report). None: at once.
    after_reply: list[Callable[[], object]] | None = None
    # The submission's own source, parsed once (xgrader.source), for explanations.
    source: Source | None = None
    # The submission's running time across all its cases (wall_s plus
    # WATCHDOG_GRACE_S); None for the reference solution: each job's own limits.
    clock: StudentClock | None = None

    def slack_s(self) -> float:
        """Sandbox and interpreter start-up, on top of the student's own time."""
        return 2.0

    def left_s(self, wanted: float) -> float:
        """`wanted` seconds, cut to what is left of the submission's running time."""
        return wanted if self.clock is None else self.clock.left(wanted)

    def out_of_time(self) -> bool:
        return self.clock is not None and self.clock.remaining() <= 0

    def charge(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.charge(seconds)

    def untimed(self) -> "GradeContext":
        """The same context off the submission's clock (the reference solution)."""
        return dataclasses.replace(self, clock=None)
