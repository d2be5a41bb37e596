"""Host side of the runner's type-preserving value encoding (sandbox/PROTOCOL.md).

Decoding only ever builds builtin types (and inert :class:`Handle` records for
remote objects), so nothing a student returns can carry behaviour onto the host.
"""

from __future__ import annotations

import base64
import math
from typing import Any

MAX_DEPTH = 64


class Handle:
    """A remote object the student's runner kept (instance, generator...): equal
    to nothing but itself, so a forged `__eq__` is never consulted."""

    __slots__ = ("number", "type_name", "text")

    def __init__(self, number: int, type_name: str, text: str) -> None:
        self.number, self.type_name, self.text = number, type_name, text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)


class BadValue(ValueError):
    """The sandbox sent something that is not a valid encoded value."""


def decode(v: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise BadValue("value nested too deeply")
    d = depth + 1
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list):
        return [decode(x, d) for x in v]
    if not isinstance(v, dict):
        raise BadValue(f"unexpected {type(v).__name__}")
    if len(v) >= 1:
        tag = next(iter(v))
        if tag.startswith("$"):
            x = v[tag]
            try:
                if tag == "$tuple":
                    return tuple(decode(i, d) for i in x)
                if tag in ("$set", "$frozenset"):
                    items = [decode(i, d) for i in x]
                    return set(items) if tag == "$set" else frozenset(items)
                if tag == "$dict":
                    return {decode(k, d): decode(i, d) for k, i in x}
                if tag == "$bytes":
                    return base64.b64decode(x, validate=True)
                if tag == "$float":
                    return float({"nan": "nan", "inf": "inf", "-inf": "-inf"}[x])
                if tag == "$int":
                    # The runner keeps Python's 4300-digit limit; so does int() here.
                    if not isinstance(x, str) or len(x) > 5000:
                        raise BadValue("integer too long")
                    return int(x)
                if tag == "$complex":
                    return complex(float(x[0]), float(x[1]))
                if tag == "$handle":
                    return Handle(int(x), str(v.get("type", "object"))[:100], str(v.get("repr", ""))[:500])
            except BadValue:
                raise
            except (TypeError, ValueError, KeyError, IndexError) as exc:
                raise BadValue(f"malformed {tag}: {type(exc).__name__}") from None
            raise BadValue(f"unknown tag {tag[:20]!r}")
    return {str(k): decode(i, d) for k, i in v.items()}


def show(value: Any, limit: int = 2000) -> str:
    """repr for feedback, capped."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def strict_equal(a: Any, b: Any, depth: int = 0) -> bool:
    """Equal and of the same types all the way down (True is not 1, 2 is not 2.0)."""
    if depth > MAX_DEPTH or type(a) is not type(b):
        return False
    d = depth + 1
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(strict_equal(x, y, d) for x, y in zip(a, b))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        for key, value in a.items():
            match = [k for k in b if strict_equal(k, key, d)]
            if len(match) != 1 or not strict_equal(value, b[match[0]], d):
                return False
        return True
    if isinstance(a, (set, frozenset)):
        if len(a) != len(b):
            return False
        return all(any(strict_equal(x, y, d) for y in b) for x in a)
    return a == b


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def numeric_equal(a: Any, b: Any, rel: float, abs_: float, depth: int = 0) -> bool:
    """Numbers within tolerance (int and float interchangeable), element-wise in
    lists/tuples/dict values; anything else strictly equal."""
    if depth > MAX_DEPTH:
        return False
    d = depth + 1
    if _is_number(a) and _is_number(b):
        if isinstance(a, float) and math.isnan(a):
            return isinstance(b, float) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)
    if isinstance(a, complex) and isinstance(b, complex):
        return math.isclose(abs(a - b), 0.0, abs_tol=max(abs_, rel * max(abs(a), abs(b))))
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(numeric_equal(x, y, rel, abs_, d) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(numeric_equal(a[k], b[k], rel, abs_, d) for k in a)
    return strict_equal(a, b, depth)
