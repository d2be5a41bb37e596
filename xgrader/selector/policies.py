"""Selection policies: given the candidates and what is known of the
student's skills, pick the next problem.

A policy is a small class with one method; custom ones are registered as
Python entry points in the group ``xgrader.selectors`` (docs/selector.md):

    class Easiest(Policy):
        name = "easiest"
        def select(self, ctx: SelectionContext) -> Selection:
            best = max(ctx.eligible, key=lambda c: ctx.mean_mastery(c))
            return Selection(best.name)

`ctx.state` is the policy's own part of the LMS's `dynamic_model` (stored
under ``"xgrader:<policy name>"``); a Selection's `state` replaces it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

from xgrader.mastery.view import SkillView
from xgrader.selector.protocol import SelectorError

__all__ = ["Candidate", "Policy", "Selection", "SelectionContext", "SkillView", "load_policy"]

ENTRY_POINT_GROUP = "xgrader.selectors"


@dataclass(frozen=True)
class Candidate:
    name: str
    index: int                 # position in the request's problems
    skills: tuple[str, ...]    # () for a problem no mapping names
    completed_count: int


@dataclass(frozen=True)
class Selection:
    problem_name: str
    state: dict[str, Any] | None = None


@dataclass(frozen=True)
class SelectionContext:
    eligible: list[Candidate]          # request order; never empty
    mastery: dict[str, SkillView]
    state: dict[str, Any] = field(default_factory=dict)
    when_complete: str = "error"
    seed: int | None = None

    def skill(self, skill_id: str) -> SkillView:
        view = self.mastery.get(skill_id)
        return view if view is not None else SkillView(skill_id, 0.0, 0, source="prior")

    def mean_mastery(self, cand: Candidate) -> float:
        if not cand.skills:
            return 0.0
        return sum(self.skill(s).p_known for s in cand.skills) / len(cand.skills)

    def complete(self, why: str) -> Selection:
        """Nothing left worth practising: an error the LMS can handle, or
        (when_complete = "repeat") the least-mastered eligible problem."""
        if self.when_complete == "repeat":
            best = min(self.eligible, key=lambda c: (self.mean_mastery(c), c.completed_count, c.index))
            return Selection(best.name)
        raise SelectorError("problem_set_complete", why)


class Policy:
    name: ClassVar[str] = ""

    def select(self, ctx: SelectionContext) -> Selection:  # pragma: no cover - interface
        raise NotImplementedError


class MasteryPolicy(Policy):
    """The candidate whose least-mastered unmastered skill is lowest. Ties:
    fewer completions, then request order. A problem without skill data is
    offered once (completed_count 0), after every problem that practises an
    unmastered skill. When every remaining problem's skills are mastered,
    the set is complete."""

    name = "mastery"

    def select(self, ctx: SelectionContext) -> Selection:
        best, best_key = None, None
        for cand in ctx.eligible:
            if cand.skills:
                open_ = [ctx.skill(s).p_known for s in cand.skills if not ctx.skill(s).mastered]
                if not open_:
                    continue
                key = (0, min(open_), cand.completed_count, cand.index)
            elif cand.completed_count == 0:
                key = (1, 0.0, 0, cand.index)
            else:
                continue
            if best_key is None or key < best_key:
                best, best_key = cand, key
        if best is None:
            return ctx.complete("every skill the remaining problems practise is mastered")
        return Selection(best.name)


class FixedPolicy(Policy):
    """The problems in the request's order: the first of those completed the
    fewest times."""

    name = "fixed"

    def select(self, ctx: SelectionContext) -> Selection:
        best = min(ctx.eligible, key=lambda c: (c.completed_count, c.index))
        return Selection(best.name)


class RandomPolicy(Policy):
    """Uniform over the eligible problems, reproducibly: the seed (from
    --seed, else drawn once) and a counter live in the policy's state."""

    name = "random"

    def select(self, ctx: SelectionContext) -> Selection:
        seed = ctx.state.get("seed")
        if not isinstance(seed, int):
            seed = ctx.seed if ctx.seed is not None else random.SystemRandom().randrange(2**31)
        n = ctx.state.get("n", 0)
        n = n if isinstance(n, int) and n >= 0 else 0
        rng = random.Random(f"{seed}:{n}")
        pick = ctx.eligible[rng.randrange(len(ctx.eligible))]
        return Selection(pick.name, {"seed": seed, "n": n + 1})


BUILTIN: dict[str, type[Policy]] = {p.name: p for p in (MasteryPolicy, FixedPolicy, RandomPolicy)}


def load_policy(name: str) -> Policy:
    """A built-in policy, or one registered under the entry-point group."""
    if name in BUILTIN:
        return BUILTIN[name]()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                cls = ep.load()
                policy = cls()
            except Exception as exc:  # noqa: BLE001  (a third party's import or constructor)
                raise SelectorError("policy_error", f"policy {name!r} failed to load: {exc}") from None
            if not callable(getattr(policy, "select", None)):
                raise SelectorError("policy_error", f"policy {name!r} has no select(ctx) method")
            return policy
    known = sorted({*BUILTIN, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
    raise SelectorError("bad_request", f"unknown policy {name!r}; known: {', '.join(known)}")
