"""Comparison modes of io cases (docs/assignments.md, "Comparison modes")."""

from __future__ import annotations

import math
import re
from typing import Any

from xgrader.assignment import CompareSpec
from xgrader.handlers.values import numeric_equal, show, strict_equal


def _norm_ws(text: str) -> list[str]:
    lines = [" ".join(line.split()) for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def _float(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


def text_matches(actual: str, expected: str, spec: CompareSpec) -> bool:
    if spec.mode == "exact":
        return actual == expected
    if spec.mode == "whitespace":
        return _norm_ws(actual) == _norm_ws(expected)
    if spec.mode == "unordered_lines":
        def lines(t: str) -> list[str]:
            return sorted(line.rstrip() for line in t.splitlines() if line.strip())
        return lines(actual) == lines(expected)
    if spec.mode == "regex":
        return re.fullmatch(expected, actual.rstrip("\n"), flags=re.DOTALL) is not None
    # numeric: token by token, numbers within tolerance, other tokens equal.
    a_tokens, e_tokens = actual.split(), expected.split()
    if len(a_tokens) != len(e_tokens):
        return False
    for a, e in zip(a_tokens, e_tokens):
        fa, fe = _float(a), _float(e)
        if fa is not None and fe is not None:
            if not (math.isclose(fa, fe, rel_tol=spec.rel_tol, abs_tol=spec.abs_tol)
                    or (math.isnan(fa) and math.isnan(fe))):
                return False
        elif a != e:
            return False
    return True


def value_matches(actual: Any, expected: Any, spec: CompareSpec, expected_text: str | None = None) -> bool:
    """`expected_text` is the regex pattern in regex mode."""
    if spec.mode == "numeric":
        return numeric_equal(actual, expected, spec.rel_tol, spec.abs_tol)
    if spec.mode == "regex":
        return re.fullmatch(expected_text or "", show(actual, 100_000), flags=re.DOTALL) is not None
    return strict_equal(actual, expected)
