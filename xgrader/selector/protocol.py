"""The TutorShop selector protocol as models: one request in, one reply out.

A tutoring LMS asks a selector which problem of a problem set a student
should see next, over stdin/stdout (an "external" selector) or an HTTP POST
(a "remote" selector); both carry the same JSON (docs/selector.md). Unknown
fields are kept and ignored, as the protocol asks; missing required ones and
values that contradict each other are :class:`SelectorError`s with a code
the LMS can act on.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# A request is a few kB for a real problem set; a megabyte is far beyond any.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_PROBLEMS = 100_000
MAX_SKILLS = 10_000
MAX_HISTORY_BITS = 4096   # an opportunity count beyond this is not a student's


class SelectorError(Exception):
    """A request the selector cannot answer. `code` is stable and documented:
    bad_request (malformed or inconsistent), too_large, problem_set_complete
    (nothing left to select), policy_error (a custom policy failed)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class _Open(BaseModel):
    """Protocol objects carry more fields than we read: keep them all."""

    model_config = ConfigDict(extra="allow", frozen=True)


class SkillState(_Open):
    """One knowledge component of the student, as the LMS keeps it.

    `history` is a bit vector of first attempts at steps using this skill
    (1 correct; the latest result is the least significant bit), with one
    bit per opportunity."""

    skill_id: int | str
    p_known: float = Field(ge=0.0, le=1.0)
    p_initial: float | None = Field(None, ge=0.0, le=1.0)
    opportunity_count: int = Field(0, ge=0, le=MAX_HISTORY_BITS)
    initial_opportunity_count: int = Field(0, ge=0, le=MAX_HISTORY_BITS)
    history: int = Field(0, ge=0)
    user: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _history_fits(self) -> "SkillState":
        if self.history.bit_length() > self.opportunity_count:
            raise ValueError(
                f"history {self.history} has {self.history.bit_length()} bits but opportunity_count is "
                f"{self.opportunity_count}: one bit per opportunity")
        return self


class ProblemSet(_Open):
    name: str = ""
    max_count: int | None = Field(None, ge=0)
    max_repeat: int | None = Field(None, ge=0)


class Problem(_Open):
    name: str = Field(min_length=1)
    label: str = ""
    selection_features: str = ""
    completed_count: int = Field(0, ge=0)


class SelectorRequest(_Open):
    skills: list[SkillState] = Field(default_factory=list, max_length=MAX_SKILLS)
    detectors: list[Any] = Field(default_factory=list)
    dynamic_model: dict[str, Any] = Field(default_factory=dict)
    problem_set: ProblemSet
    problems: list[Problem] = Field(min_length=1, max_length=MAX_PROBLEMS)
    condition: str = ""

    @model_validator(mode="after")
    def _unique_names(self) -> "SelectorRequest":
        names = [p.name for p in self.problems]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})[:5]
            raise ValueError(f"problem names must be unique; repeated: {dup}")
        return self

    def user(self) -> dict[str, Any]:
        """The student record the skills carry (all skills name the same user)."""
        for s in self.skills:
            if s.user:
                return s.user
        return {}


class SelectorReply(BaseModel):
    model_config = ConfigDict(frozen=True)

    problem_name: str
    dynamic_model: dict[str, Any]


def parse_request(raw: bytes | str) -> SelectorRequest:
    """Bytes off stdin or a POST body -> a validated request, or a
    SelectorError whose message names the field."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > MAX_REQUEST_BYTES:
        raise SelectorError("too_large", f"request of {size} bytes is over the {MAX_REQUEST_BYTES}-byte limit")
    try:
        # Parsed and validated in one pass by pydantic-core (no Python dicts in between).
        return SelectorRequest.model_validate_json(raw)
    except ValidationError as exc:
        kind = exc.errors()[0]["type"]
        if kind == "json_invalid":
            raise SelectorError("bad_request", f"request is not JSON: {exc.errors()[0]['msg'][:200]}") from None
        if kind == "model_type":
            raise SelectorError("bad_request", "request must be a JSON object") from None
        raise SelectorError("bad_request", _describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "request"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
