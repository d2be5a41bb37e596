"""What is believed of one of a student's skills, from wherever it came."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_THRESHOLD = 0.95


@dataclass(frozen=True)
class SkillView:
    """What is believed of one skill of the student, and where it came from."""

    skill_id: str
    p_known: float
    opportunities: int
    threshold: float = DEFAULT_THRESHOLD
    source: str = "lms"   # lms | ledger | prior

    @property
    def mastered(self) -> bool:
        return self.p_known >= self.threshold
