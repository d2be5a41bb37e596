"""What the instructor-in-the-loop keeps in the hint store, as pydantic
models: the delivery of a hint (what its student page and the staff need),
the student's rating, an escalation to the course staff and its answer.

An escalation's life, one state change at a time (:func:`transition`, the
same rules for every store):

    waiting --claim--> claimed --answer--> answered --close--> closed
       ^                  |                              ^
       +-----release------+        waiting/claimed --close-+

Answering an unclaimed request claims it; a request claimed by another
instructor can be neither answered, released nor closed.
"""

from __future__ import annotations

import enum
import time

from pydantic import BaseModel, Field

from xgrader.hints.models import HintType

# Caps on what a delivery keeps of the submission (staff view).
MAX_FILE_CHARS = 100_000
MAX_FILES = 20
MAX_FEEDBACK_CHARS = 60_000
MAX_ANSWER_CHARS = 10_000


class StaffTest(BaseModel):
    """One test as staff see it: the student's view plus, for hidden tests,
    the test itself (the case, or the test function's source)."""

    name: str
    status: str
    visible: bool
    exception_type: str | None = None
    input: str | None = None
    expected: str | None = None
    actual: str | None = None
    message: str | None = None
    definition: str | None = None     # hidden tests: what the test is (never shown to students)
    happened: dict[str, str] | None = None   # hidden tests: input, expected, actual, printed, error... (staff only)


class Delivery(BaseModel):
    """A delivered hint with a student page: what the page and the staff
    dashboard show. Recorded when the hint is delivered."""

    audit_id: int
    at: float = Field(default_factory=time.time)
    student: str                        # anonymous_student_id (never in the link)
    assignment: str
    title: str = ""
    submission_id: str = ""
    hint_type: HintType
    model: str
    hint: str
    score: float = 0
    max_score: float = 1
    files: dict[str, str] = Field(default_factory=dict)    # the student's files as graded
    feedback: str = ""                  # the visible feedback, as text
    tests: list[StaffTest] = Field(default_factory=list)


class Rating(BaseModel):
    audit_id: int
    at: float = Field(default_factory=time.time)
    helpful: bool


class EscalationState(str, enum.Enum):
    waiting = "waiting"
    claimed = "claimed"
    answered = "answered"
    closed = "closed"


OPEN_STATES = (EscalationState.waiting, EscalationState.claimed)


class Escalation(BaseModel):
    id: int = 0                         # assigned by the store
    audit_id: int
    at: float = Field(default_factory=time.time)
    student: str
    assignment: str
    hint_type: HintType
    model: str
    note: str = ""
    state: EscalationState = EscalationState.waiting
    claimed_by: str | None = None
    claimed_at: float | None = None
    answer: str | None = None
    answered_by: str | None = None
    answered_at: float | None = None
    closed_by: str | None = None
    closed_at: float | None = None
    in_feedback_at: float | None = None  # the answer was added to the student's next feedback


class Refused(Exception):
    """A state change that is not allowed now; `status` is the HTTP status
    the web pages answer with (409: someone else's claim, already answered...)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


ACTIONS = ("claim", "release", "answer", "close")


def transition(esc: Escalation, action: str, staff: str, text: str = "", now: float | None = None) -> Escalation:
    """The escalation after `staff` does `action`, or Refused. Pure: the
    stores apply it inside their own transaction."""
    now = time.time() if now is None else now
    staff = staff.strip()
    if not staff:
        raise Refused("who is acting? (a staff name is required)", 400)
    state, owner = esc.state, esc.claimed_by
    others = state is EscalationState.claimed and owner != staff
    if action == "claim":
        if state is EscalationState.claimed and owner == staff:
            raise Refused("you have already claimed this request")
        if others:
            raise Refused(f"already claimed by {owner}")
        if state is not EscalationState.waiting:
            raise Refused(f"this request is {state.value}")
        return esc.model_copy(update={"state": EscalationState.claimed, "claimed_by": staff, "claimed_at": now})
    if action == "release":
        if state is not EscalationState.claimed:
            raise Refused(f"this request is {state.value}, not claimed")
        if others:
            raise Refused(f"claimed by {owner}: only they can release it")
        return esc.model_copy(update={"state": EscalationState.waiting, "claimed_by": None, "claimed_at": None})
    if action == "answer":
        text = text.strip()
        if not text:
            raise Refused("the answer is empty", 400)
        if len(text) > MAX_ANSWER_CHARS:
            raise Refused(f"the answer is longer than {MAX_ANSWER_CHARS} characters", 400)
        if others:
            raise Refused(f"claimed by {owner}: only they can answer it")
        if state not in OPEN_STATES:
            raise Refused(f"this request is already {state.value}")
        return esc.model_copy(update={
            "state": EscalationState.answered, "claimed_by": staff, "claimed_at": esc.claimed_at or now,
            "answer": text, "answered_by": staff, "answered_at": now})
    if action == "close":
        if state is EscalationState.closed:
            raise Refused("this request is already closed")
        if others:
            raise Refused(f"claimed by {owner}: only they can close it")
        return esc.model_copy(update={"state": EscalationState.closed, "closed_by": staff, "closed_at": now})
    raise Refused(f"unknown action {action[:20]!r} (one of {', '.join(ACTIONS)})", 400)


class GroupStats(BaseModel):
    """Ratings and escalations of one (assignment, hint type, model)."""

    assignment: str
    hint_type: str
    model: str
    delivered: int = 0         # hints delivered with a student page
    helpful: int = 0
    unhelpful: int = 0
    escalated: int = 0
    answered: int = 0
    answer_seconds: float = 0.0   # summed over the answered ones

    @property
    def rated(self) -> int:
        return self.helpful + self.unhelpful

    @property
    def helpful_rate(self) -> float | None:
        return self.helpful / self.rated if self.rated else None


class LoopStats(BaseModel):
    groups: list[GroupStats] = Field(default_factory=list)
    waiting: int = 0           # escalations nobody has claimed
    claimed: int = 0           # claimed, not answered yet
    oldest_open_at: float | None = None
