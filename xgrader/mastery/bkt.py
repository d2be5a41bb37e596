"""Bayesian Knowledge Tracing: the standard four-parameter model.

A skill is either known or not. Each opportunity (one step, first attempt
only) is observed as correct or not; `p_slip` is the chance a student who
knows the skill still gets it wrong, `p_guess` the chance one who doesn't
gets it right, and `p_transit` the chance of learning it at the opportunity.
The posterior after an observation is Bayes' rule; learning is applied after.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class BktParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    p_init: float = Field(0.2, ge=0.0, le=1.0)
    p_transit: float = Field(0.1, ge=0.0, le=1.0)
    # Below 0.5 each, so a correct answer is always evidence *for* knowing.
    p_slip: float = Field(0.1, ge=0.0, lt=0.5)
    p_guess: float = Field(0.2, ge=0.0, lt=0.5)
    threshold: float = Field(0.95, gt=0.0, le=1.0)  # p_known at or above: mastered


def update(p_known: float, correct: bool, params: BktParams) -> float:
    """p_known after one observed opportunity."""
    s, g = params.p_slip, params.p_guess
    if correct:
        num = p_known * (1.0 - s)
        den = num + (1.0 - p_known) * g
    else:
        num = p_known * s
        den = num + (1.0 - p_known) * (1.0 - g)
    posterior = num / den if den > 0 else p_known
    return posterior + (1.0 - posterior) * params.p_transit


def push_history(history: int, correct: bool) -> int:
    """The protocol's bit vector: the latest result is the least significant bit."""
    return (history << 1) | int(correct)


def p_correct(p_known: float, params: BktParams) -> float:
    """Chance of a correct first attempt at the next opportunity."""
    return p_known * (1.0 - params.p_slip) + (1.0 - p_known) * params.p_guess
