"""What a child tells the parent over its pipe: JSON lines.

    {"report": {...ChildReport}}  the final word
    {"events": [...]}             after the report: hook calls made since (the
                                  ledger's outcome), added to the report's events

A child never posts: the daemon's parent posts the reply a child reported
(outcome "graded"); push mode answers the HTTP request with it.
"""

from __future__ import annotations

import json
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# "graded": `reply` holds the body the parent posts; "infra": grading failed
# (retried, bounded). Push mode's children report "posted" with the reply.
ChildOutcome = Literal["graded", "posted", "foreign_key", "rejected", "post_failed", "infra"]


class ChildReport(BaseModel):
    model_config = ConfigDict(extra="ignore")

    outcome: ChildOutcome
    infra_kind: str | None = None       # sandbox_start | handler_crash | infra | fetch ...
    detail: str = Field("", max_length=2000)  # operator-facing, never student text
    phases: dict[str, float] = Field(default_factory=dict)
    assignment: str = ""
    grade_outcome: str = ""             # report.Outcome value, or "payload_error"
    score: float | None = None
    max_score: float | None = None
    # Hook calls made in the child ([name, args, kwargs]), replayed by the
    # parent into its metrics (see HookChain.take_child_events).
    events: list[list] = Field(default_factory=list, max_length=1000)
    # The result body the child computed, for the parent to send: the
    # daemon's put_result (outcome "graded") or push mode's HTTP answer.
    reply: str | None = None


class Reporter:
    """The child's end of the pipe. Each line is one os.write (< PIPE_BUF when small)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def _send(self, obj: dict) -> None:
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def report(self, report: ChildReport) -> None:
        self._send({"report": report.model_dump()})

    def events(self, events: list[list]) -> None:
        if events:
            self._send({"events": events})
