"""One selection: request -> candidates and mastery -> policy -> reply.

Mastery comes from two sources, merged per skill by one rule: the LMS's
own `skills` in the request, and the evidence xgrader's ledger recorded for
the same student (every test of every graded attempt). For a skill both
know, the source with more opportunities wins (ties go to the LMS, the
system of record); a skill only one knows comes from it; a skill neither
knows starts at its catalog `p_init`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from xgrader.mastery.catalog import SkillCatalog
from xgrader.selector.config import SelectorConfig
from xgrader.selector.policies import Candidate, Policy, SelectionContext, SkillView, load_policy
from xgrader.selector.protocol import SelectorError, SelectorReply, SelectorRequest, parse_request

NAMESPACE = "xgrader:"


class Evidence(Protocol):
    """Mastery xgrader recorded for a student (xgrader.mastery.store.LedgerEvidence)."""

    def skills_for(self, student: str) -> dict[str, SkillView]: ...

    def start_problem_set(self, student: str, problem_set: str) -> None: ...


class Selector:
    """Built once per process (CLI run or server); `answer` is re-entrant."""

    def __init__(self, config: SelectorConfig, *, catalog: SkillCatalog | None = None,
                 policy: str | None = None, evidence: Evidence | None = None,
                 students: dict[str, str] | None = None,
                 assignment_skills: Callable[[str], tuple[str, ...]] | None = None,
                 seed: int | None = None) -> None:
        self.config = config
        self.catalog = catalog or SkillCatalog()
        self.policy: Policy = load_policy(policy or config.policy)
        self.evidence = evidence
        self.students = students or {}
        self.assignment_skills = assignment_skills
        self.seed = seed
        self._skills_cache: dict[tuple[str, str], tuple[str, ...]] = {}

    def answer(self, raw: bytes | str) -> dict[str, Any]:
        return self.select(parse_request(raw)).model_dump()

    def select(self, req: SelectorRequest) -> SelectorReply:
        ps = req.problem_set
        done = sum(p.completed_count for p in req.problems)
        if ps.max_count and done >= ps.max_count:
            raise SelectorError("problem_set_complete", f"{done} problems completed, max_count is {ps.max_count}")
        limit = ps.max_repeat or None
        eligible = [Candidate(p.name, i, self._problem_skills(p.name, p.selection_features), p.completed_count)
                    for i, p in enumerate(req.problems) if limit is None or p.completed_count < limit]
        if not eligible:
            raise SelectorError("problem_set_complete", f"every problem was completed max_repeat={limit} times")
        key = NAMESPACE + self.policy.name
        state = req.dynamic_model.get(key)
        ctx = SelectionContext(eligible=eligible, mastery=self.mastery(req),
                               state=dict(state) if isinstance(state, dict) else {},
                               when_complete=self.config.when_complete, seed=self.seed)
        try:
            sel = self.policy.select(ctx)
        except SelectorError:
            raise
        except Exception as exc:  # noqa: BLE001  (a custom policy's bug is the LMS's clear error)
            raise SelectorError("policy_error", f"policy {self.policy.name!r} failed: {type(exc).__name__}: {exc}") \
                from None
        names = {c.name for c in eligible}
        if getattr(sel, "problem_name", None) not in names:
            raise SelectorError("policy_error",
                                f"policy {self.policy.name!r} chose {getattr(sel, 'problem_name', None)!r}, "
                                "not an eligible problem")
        model = dict(req.dynamic_model)
        if sel.state is not None:
            model[key] = sel.state
        return SelectorReply(problem_name=sel.problem_name, dynamic_model=model)

    def mastery(self, req: SelectorRequest) -> dict[str, SkillView]:
        views: dict[str, SkillView] = {}
        for s in req.skills:
            sid = self.config.skill_id(s.skill_id)
            views[sid] = SkillView(sid, s.p_known, s.opportunity_count,
                                   self.catalog.params_for(sid).threshold, "lms")
        if self.evidence is not None:
            student = self.student_id(req.user())
            if student:
                # p_initial moves only when a student starts a problem set
                self.evidence.start_problem_set(student, req.problem_set.name)
                for sid, ours in self.evidence.skills_for(student).items():
                    theirs = views.get(sid)
                    if theirs is None or ours.opportunities > theirs.opportunities:
                        views[sid] = ours
        return views

    def student_id(self, user: dict[str, Any]) -> str | None:
        value = user.get(self.config.students.field)
        if value is None or value == "":
            return None
        value = str(value)
        return self.students.get(value, value) if self.students else value

    def _problem_skills(self, name: str, features: str) -> tuple[str, ...]:
        key = (name, features)
        cached = self._skills_cache.get(key)
        if cached is not None:
            return cached
        entry = self.config.problem_map(name, features)
        skills: tuple[str, ...] = ()
        if entry is not None:
            skills = tuple(entry.skills)
            if not skills and entry.assignment and self.assignment_skills is not None:
                skills = self.assignment_skills(entry.assignment)
        if len(self._skills_cache) < 100_000:
            self._skills_cache[key] = skills
        return skills
