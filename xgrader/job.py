"""A grading request: what a handler needs to grade one submission, decoupled
from where it came from (queue pull, push mode, `xgrader grade`, batch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from xgrader.report import GradeReport
    from xgrader.wire import GraderReply


class GradeRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    grader: str                       # the assignment, as named by grader_payload
    options: dict[str, Any] = Field(default_factory=dict)  # other payload keys
    student_response: str = ""        # code typed into the LMS, if any
    files: dict[str, bytes] = Field(default_factory=dict)  # uploaded files, downloaded
    student_id: str = ""              # anonymous_student_id (hint quotas)
    submission_id: str = ""           # for logs only
    hint_type: str | None = None      # the payload may choose one
    # Names the job's sandboxes (SandboxJob.label) so the daemon can kill them
    # by label when it kills the job: set by the daemon, e.g. xg-<pid>-<id>.
    label: str = ""


@dataclass(frozen=True)
class GradedSubmission:
    """One graded submission as its entry point saw it, handed to
    `Hooks.on_attempt` once the reply is on its way (the attempt ledger
    records it)."""

    source: str                   # daemon | push | batch | grade | regrade
    request: GradeRequest
    report: "GradeReport"
    reply: "GraderReply"
    queue: str = ""
    student: str = ""             # default: request.student_id (anonymised, from student_info)
    graded_at: float = 0.0        # epoch seconds; 0: now
    timings: dict[str, float] = field(default_factory=dict)
    regrade_of: int | None = None   # the ledger attempt this one re-grades
    regrade_id: str | None = None
