"""Optional repair step: the model proposes minimal fixes, each is graded in
the sandbox against the real tests, and the passing fix closest to the
student's code (token edit distance) becomes private context for the hint.
The fix itself is never shown to the student; the guard rejects hints that
overlap with it."""

from __future__ import annotations

import io
import json
import time
import tokenize
from dataclasses import dataclass
from typing import Callable

from pydantic import ValidationError

from xgrader.assignment import Assignment
from xgrader.hints.models import RepairReply
from xgrader.report import GradeReport

MAX_FIX_CHARS = 20_000


def code_tokens(source: str) -> list[str]:
    """Python tokens without comments/whitespace (plain split if it does not tokenize)."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER, tokenize.ENCODING}
    try:
        return [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in skip]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return source.split()


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance over token lists (two rows, O(len(a)*len(b)))."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


@dataclass(frozen=True)
class RepairResult:
    fix: str | None
    summary: str          # for the audit: how many fixes, how many passed, the distance kept


def parse_fixes(raw: str) -> list[str]:
    try:
        reply = RepairReply.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        return []
    return [_strip_fence(f) for f in reply.fixes if isinstance(f, str) and 0 < len(f) <= MAX_FIX_CHARS]


def _strip_fence(code: str) -> str:
    lines = code.strip("\n").splitlines()
    if lines and lines[0].startswith("```"):
        lines = lines[1:]
        if lines and lines[-1].startswith("```"):
            lines = lines[:-1]
    return "\n".join(lines) + "\n"


def best_fix(assignment: Assignment, files: dict[str, bytes], fixes: list[str],
             grade: Callable[[Assignment, dict[str, bytes]], GradeReport], deadline: float) -> RepairResult:
    """Grade each candidate (entry file replaced) until the deadline; keep the
    full-marks fix with the smallest token edit distance to the student's code."""
    entry = assignment.config.entry
    student = code_tokens(files.get(entry, b"").decode("utf-8", "replace"))
    passing: list[tuple[int, str]] = []
    tried = 0
    for fix in fixes:
        if time.monotonic() >= deadline:
            break
        tried += 1
        report = grade(assignment, {**files, entry: fix.encode()})
        if report.correct:
            passing.append((edit_distance(student, code_tokens(fix)), fix))
    if not passing:
        return RepairResult(None, f"{len(fixes)} proposed, {tried} graded, none passed")
    distance, fix = min(passing, key=lambda p: p[0])
    return RepairResult(fix, f"{len(fixes)} proposed, {tried} graded, {len(passing)} passed, "
                             f"kept distance {distance} tokens")
