"""Pydantic models of the hint stage: what the model must answer, what the
store keeps (cache entries, audit records)."""

from __future__ import annotations

import enum
import time

from pydantic import BaseModel, ConfigDict, Field

# Bumped whenever the prompts change: part of the cache key, recorded in the audit.
PROMPT_VERSION = "2"


class HintType(str, enum.Enum):
    planning = "planning"          # the steps needed
    debugging = "debugging"        # one important bug, a sentence or two
    optimisation = "optimisation"  # speed or readability of a working program


class HintOutcome(str, enum.Enum):
    """Labels of hooks.on_hint and of the audit log."""

    delivered = "delivered"
    cached = "cached"                  # delivered from the cache
    guard_rejected = "guard_rejected"  # both replies failed the guard (or were malformed)
    timeout = "timeout"                # the budget ran out
    quota = "quota"
    error = "error"                    # endpoint failing, breaker open, no slot, bug
    disabled = "disabled"              # switched off for the assignment


class HintReply(BaseModel):
    """The model's structured answer to the hint prompt."""

    model_config = ConfigDict(extra="ignore")

    hint: str = Field(min_length=1, max_length=4000)


class RepairReply(BaseModel):
    """The model's structured answer to the repair prompt: whole fixed files."""

    model_config = ConfigDict(extra="ignore")

    fixes: list[str] = Field(default_factory=list, max_length=5)


class CachedHint(BaseModel):
    hint: str
    hint_type: HintType
    audit_id: int          # the decision that produced it (`xgrader hints block ID`)


class Attempt(BaseModel):
    """One model call: the exact messages sent, the reply, the verdict."""

    step: str                     # repair | hint | regenerate
    messages: list[dict[str, str]]
    reply: str | None = None
    verdict: str = ""             # ok | malformed: ... | rejected: ... | error: ...
    tokens: int = 0
    seconds: float = 0.0


class AuditRecord(BaseModel):
    id: int = 0                   # assigned by the store
    at: float = Field(default_factory=time.time)
    submission_id: str = ""
    student: str = ""             # anonymous_student_id, as the LMS sent it
    assignment: str
    hint_type: HintType | None = None
    model: str = ""
    prompt_version: str = PROMPT_VERSION
    cache_key: str = ""
    outcome: HintOutcome
    reason: str = ""
    delivered: bool = False
    hint: str | None = None
    source_audit_id: int | None = None   # for cache hits: the decision that made the hint
    attempts: list[Attempt] = Field(default_factory=list)
    repair: str = ""              # summary of the repair step (fix kept: distance), never the fix itself
    tokens: int = 0
    seconds: float = 0.0
    blocked: bool = False
