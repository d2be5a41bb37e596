"""`xgrader hints report`: the helpful rate of delivered hints by assignment,
hint type and model (any of them), with escalations and time to answer, as
a text table or CSV."""

from __future__ import annotations

import csv
import io
from typing import Iterable

from xgrader.hints.records import GroupStats, LoopStats

DIMENSIONS = {"assignment": "assignment", "type": "hint_type", "model": "model"}
COUNTS = ("delivered", "helpful", "unhelpful", "escalated", "answered", "answer_seconds")


def grouped(stats: LoopStats, by: Iterable[str]) -> list[GroupStats]:
    """The statistics summed over the dimensions not in `by`."""
    fields = [DIMENSIONS[b] for b in by]
    out: dict[tuple, GroupStats] = {}
    for g in stats.groups:
        key = tuple(getattr(g, f) for f in fields)
        total = out.setdefault(key, GroupStats(assignment=g.assignment if "assignment" in fields else "*",
                                               hint_type=g.hint_type if "hint_type" in fields else "*",
                                               model=g.model if "model" in fields else "*"))
        for name in COUNTS:
            setattr(total, name, getattr(total, name) + getattr(g, name))
    return [out[k] for k in sorted(out)]


def _total(groups: list[GroupStats]) -> GroupStats:
    total = GroupStats(assignment="TOTAL", hint_type="", model="")
    for g in groups:
        for name in COUNTS:
            setattr(total, name, getattr(total, name) + getattr(g, name))
    return total


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def mean_answer_s(g: GroupStats) -> float | None:
    return g.answer_seconds / g.answered if g.answered else None


def table(stats: LoopStats, by: list[str]) -> str:
    groups = grouped(stats, by)
    heads = [b.upper() for b in by] + ["DELIVERED", "RATED", "HELPFUL", "UNHELPFUL", "HELPFUL RATE",
                                        "ESCALATED", "ANSWERED", "MEAN TIME TO ANSWER"]
    rows = []
    for g in groups + ([_total(groups)] if len(groups) > 1 else []):
        keys = [getattr(g, DIMENSIONS[b]) for b in by] if g.assignment != "TOTAL" else \
            ["TOTAL"] + [""] * (len(by) - 1)
        rate = g.helpful_rate
        rows.append(keys + [str(g.delivered), str(g.rated), str(g.helpful), str(g.unhelpful),
                            f"{rate:.0%}" if rate is not None else "-", str(g.escalated), str(g.answered),
                            _duration(mean_answer_s(g))])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    if not rows:
        lines.append("(no delivered hints with a student page yet)")
    lines.append(f"escalations waiting: {stats.waiting}, claimed and not answered: {stats.claimed}")
    return "\n".join(lines)


def as_csv(stats: LoopStats, by: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(by + ["delivered", "rated", "helpful", "unhelpful", "helpful_rate", "escalated", "answered",
                     "mean_answer_seconds"])
    for g in grouped(stats, by):
        rate, mean = g.helpful_rate, mean_answer_s(g)
        w.writerow([getattr(g, DIMENSIONS[b]) for b in by]
                   + [g.delivered, g.rated, g.helpful, g.unhelpful, "" if rate is None else f"{rate:.4f}",
                      g.escalated, g.answered, "" if mean is None else f"{mean:.1f}"])
    return buf.getvalue()
