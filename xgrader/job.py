"""A grading request: what a handler needs to grade one submission, decoupled
from where it came from (queue pull, push mode, `xgrader grade`, batch)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
