"""The selector's own configuration: how the LMS's problems and skills map
onto xgrader's assignments and skills, and how its students map onto the
anonymised ids the ledger records.

    # selector.toml
    policy = "mastery"            # default policy (--policy overrides)
    when_complete = "error"       # or "repeat": see docs/selector.md

    [[problems]]
    name = "sum_digits_1"         # a problem name ...
    assignment = "sum_digits"     # ... graded by this assignment: its skills
    [[problems]]
    features = "loops"            # ... or problems whose selection_features has this word
    skills = ["loops"]            # skills named directly

    [lms_skills]                  # the LMS's skill ids -> xgrader skill ids
    "414" = "loops"

    [students]
    field = "username"            # the request's user field naming the student
    map = "students.csv"          # "LMS value,anonymised id" lines; absent: the value itself

Problems no entry matches are still selectable, with no skill data.
"""

from __future__ import annotations

import csv
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xgrader.mastery.catalog import valid_skill_id


class ConfigError(Exception):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProblemMap(_Strict):
    name: str | None = None
    features: str | None = None
    assignment: str | None = None
    skills: list[str] = Field(default_factory=list)

    @field_validator("skills")
    @classmethod
    def _skills(cls, v: list[str]) -> list[str]:
        return [valid_skill_id(s) for s in v]

    @model_validator(mode="after")
    def _matcher(self) -> "ProblemMap":
        if (self.name is None) == (self.features is None):
            raise ValueError("a [[problems]] entry needs exactly one of `name` or `features`")
        if self.assignment is None and not self.skills:
            raise ValueError("a [[problems]] entry needs `assignment` or `skills`")
        return self

    def matches(self, name: str, features: str) -> bool:
        if self.name is not None:
            return self.name == name
        return self.features in features.replace(",", " ").split()


class StudentMap(_Strict):
    field: str = "username"
    map: Path | None = None


class SelectorConfig(_Strict):
    policy: str = "mastery"
    when_complete: Literal["error", "repeat"] = "error"
    problems: list[ProblemMap] = Field(default_factory=list)
    lms_skills: dict[str, str] = Field(default_factory=dict)
    students: StudentMap = Field(default_factory=StudentMap)

    def problem_map(self, name: str, features: str) -> ProblemMap | None:
        for entry in self.problems:
            if entry.matches(name, features):
                return entry
        return None

    def skill_id(self, lms_skill_id: int | str) -> str:
        return self.lms_skills.get(str(lms_skill_id), str(lms_skill_id))


def load_config(path: Path | None) -> SelectorConfig:
    if path is None:
        return SelectorConfig()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    students = data.get("students")
    if isinstance(students, dict) and students.get("map"):
        students["map"] = (Path(path).parent / students["map"]).resolve()
    try:
        return SelectorConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: {where}: {err['msg']}") from None


def load_student_map(config: SelectorConfig) -> dict[str, str]:
    """LMS student value -> the ledger's anonymised id ({} means identity)."""
    path = config.students.map
    if path is None:
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return {row[0].strip(): row[1].strip() for row in csv.reader(fh) if len(row) >= 2 and row[0].strip()}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
