"""skills.toml at the handlers root: the course's skills and their BKT parameters.

    [defaults]                 # optional: parameters every skill starts from
    p_init = 0.2
    threshold = 0.95

    [[skills]]
    id = "loops"
    title = "Writing a loop that accumulates"
    p_transit = 0.15           # any BKT parameter overrides the defaults

Tests name skills by id (`skills = [...]` on `[[tests]]` rules and io cases,
and a per-assignment default); `xgrader check` flags a test without one.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from xgrader.errors import AssignmentError
from xgrader.mastery.bkt import BktParams
from xgrader.tomlfile import read_toml

SKILLS_FILE = "skills.toml"
_SKILL_ID = re.compile(r"^[A-Za-z0-9_.:+=-]{1,100}$")


def valid_skill_id(value: str) -> str:
    if not _SKILL_ID.match(value):
        raise ValueError(f"skill id {value!r}: 1-100 letters, digits or _.:+=-")
    return value


class Skill(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    title: str = Field("", max_length=200)
    params: BktParams = Field(default_factory=BktParams)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return valid_skill_id(v)


class SkillCatalog(BaseModel):
    """Every skill of a course by id. A skill a test names but the catalog
    lacks still works, with the default parameters (`params_for`)."""

    model_config = ConfigDict(frozen=True)

    skills: dict[str, Skill] = Field(default_factory=dict)
    defaults: BktParams = Field(default_factory=BktParams)

    def params_for(self, skill_id: str) -> BktParams:
        skill = self.skills.get(skill_id)
        return skill.params if skill is not None else self.defaults

    def title(self, skill_id: str) -> str:
        skill = self.skills.get(skill_id)
        return (skill.title if skill is not None else "") or skill_id


def load_catalog(handlers_root: Path) -> SkillCatalog:
    """The catalog at `handlers_root/skills.toml`; empty when there is none."""
    path = Path(handlers_root) / SKILLS_FILE
    if not path.is_file():
        return SkillCatalog()
    data = read_toml(path)
    unknown = set(data) - {"defaults", "skills"}
    if unknown:
        raise AssignmentError(f"{path}: unknown keys {sorted(unknown)} (expected [defaults] and [[skills]])")
    try:
        defaults = BktParams.model_validate(data.get("defaults", {}))
        skills: dict[str, Skill] = {}
        for i, entry in enumerate(data.get("skills", [])):
            if not isinstance(entry, dict):
                raise AssignmentError(f"{path}: skills[{i}] must be a table")
            params = {k: v for k, v in entry.items() if k not in ("id", "title")}
            skill = Skill(id=entry.get("id", ""), title=entry.get("title", ""),
                          params=BktParams.model_validate({**defaults.model_dump(), **params}))
            if skill.id in skills:
                raise AssignmentError(f"{path}: skill {skill.id!r} is defined twice")
            skills[skill.id] = skill
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise AssignmentError(f"{path}: {where}: {err['msg']}") from None
    return SkillCatalog(skills=skills, defaults=defaults)
