"""What a handler needs besides the assignment and the submission's files."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from xgrader.config import Settings
from xgrader.handlers.expected import ExpectedStore
from xgrader.hooks import Hooks
from xgrader.source import Source
from xgrader.backends.base import Backend, Limits


# A submission's code is stopped at most this long after its wall_s ran out.
WATCHDOG_GRACE_S = 0.5


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
    # time.monotonic() by which every sandbox running this submission's code
    # is stopped: the assignment's wall_s from the start of grading, plus
    # WATCHDOG_GRACE_S. None (the reference solution): each job's own limits.
    deadline: float | None = None

    def slack_s(self) -> float:
        """Sandbox and interpreter start-up, on top of the student's own time."""
        return 2.0

    def remaining_s(self, wanted: float) -> float:
        """`wanted` seconds, cut to what is left before the deadline (<= 0: none left)."""
        if self.deadline is None:
            return wanted
        return min(wanted, self.deadline - time.monotonic())
