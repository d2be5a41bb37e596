"""What a handler needs besides the assignment and the submission's files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from xgrader.config import Settings
from xgrader.handlers.expected import ExpectedStore
from xgrader.hooks import Hooks
from xgrader.source import Source
from xgrader.backends.base import Backend, Limits


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

    def slack_s(self) -> float:
        """Sandbox and interpreter start-up, on top of the student's own time."""
        return 2.0
