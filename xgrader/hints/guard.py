"""Checks a model reply before a student sees it. A reply is rejected if it
is not the JSON asked for, contains a code block or code-like lines, overlaps
heavily with the private fix or the reference solution, contains a hidden
test value or a secret, or is too long.

Hidden values are matched as text and, for numbers, by value: `33.830`,
`1e3`, `1,000` and `one thousand` are the hidden 33.83 and 1000
(:mod:`xgrader.hints.numbers`)."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

from pydantic import ValidationError

from xgrader.assignment import Assignment
from xgrader.hints import numbers
from xgrader.hints.models import HintReply, HintType

MAX_CHARS = {HintType.planning: 700, HintType.debugging: 400, HintType.optimisation: 400}
NGRAM = 4
MAX_LEAKED_NGRAMS = 1       # more shared 4-grams of solution-only tokens (a 5-token run): a leak
MIN_VALUE_CHARS = 3         # shorter hidden literals (0, 1, "a") are too common to police

_TOKEN = re.compile(r"\w+|[^\w\s]")
_CODE_LINE = [
    re.compile(r"^\s*(def|class)\s+\w+\s*[(:]"),
    re.compile(r"^\s*(for|while|if|elif|with|try|except|else|finally)\b.*:\s*$"),
    re.compile(r"^\s*(return|import|raise|yield|assert|lambda)\b(?!\s+(a|an|the|to|is|it)\b)"),
    re.compile(r"^\s*from\s+[\w.]+\s+import\b"),
    re.compile(r"^\s*[\w.\[\]]+\s*(=|\+=|-=|\*=|/=|//=|%=)\s*[^=\s].*$"),  # a bare assignment line
    re.compile(r"^\s*\w+\(.*\)\s*;?\s*$"),                                # a bare call line
    re.compile(r"^( {4}|\t)\S"),                                           # indented block
    re.compile(r"[;{}]\s*$"),
]
# Inline code spans that are statements, not names: `return n * fact(n - 1)`.
_INLINE = re.compile(r"`([^`]+)`")
_STATEMENT = re.compile(r"\b(def|return|lambda|for .* in|while|import)\b|[=;:]\s*\S")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    hint: str = ""


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def ngrams(toks: list[str], n: int = NGRAM) -> set[tuple[str, ...]]:
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def hidden_values(assignment: Assignment) -> set[str]:
    """Literals of the hidden tests (pytest files under tests/, hidden io
    cases) as text. Values the student can already see (description, visible
    cases, public tests) are dropped by :func:`public_filter`."""
    values: set[str] = set()
    for name, data in assignment.tests.items():
        if name.endswith(".py"):
            values |= _literals(data.decode("utf-8", "replace"))
    for case in assignment.cases:
        if case.visible:
            continue
        for text in (case.expr, case.stdin, case.expected):
            if text:
                values |= _literals(text) | {line.strip() for line in text.splitlines()}
    return {v for v in values if len(v) >= MIN_VALUE_CHARS}


def public_text(assignment: Assignment) -> str:
    parts = [assignment.description]
    parts += [d.decode("utf-8", "replace") for d in assignment.public_tests.values()]
    for case in assignment.cases:
        if case.visible:
            parts += [case.expr or "", case.stdin or "", case.expected or ""]
    return "\n".join(parts)


def _literals(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {t for t in tokens(source) if t.isalnum()}
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float)) \
                and not isinstance(node.value, bool):
            text = str(node.value).strip()
            if text and "\n" not in text and len(text) <= 200:
                out.add(text)
    return out


class Guard:
    def __init__(self, hint_type: HintType, student_code: str, public: str, hidden: set[str],
                 reference: str, secrets: list[str]) -> None:
        self.hint_type = hint_type
        self.secrets = [s for s in secrets if s]
        visible = student_code + "\n" + public
        # Hidden values the student has been shown anyway are not secret.
        self.hidden = {v for v in hidden if not _contains(visible, v)}
        # ...and by value for numbers: the student's own 1000 makes a hidden 1e3 not secret.
        seen = numbers.values(visible)
        self.hidden_numbers = {n for v in hidden for n in numbers.values(v)
                               if len(numbers.canonical(n)) >= MIN_VALUE_CHARS and n not in seen}
        self.visible_ngrams = ngrams(tokens(visible))
        self.reference = reference

    def check(self, raw: str, private_fix: str | None = None) -> Verdict:
        try:
            reply = HintReply.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            return Verdict(False, f"malformed: {str(exc).splitlines()[0][:120]}")
        return self.check_text(reply.hint, private_fix)

    def check_text(self, hint: str, private_fix: str | None = None) -> Verdict:
        """The rules on a hint's text (a model reply, or a cached hint served again)."""
        hint = hint.strip()
        if len(hint) > MAX_CHARS[self.hint_type]:
            return Verdict(False, f"too long: {len(hint)} > {MAX_CHARS[self.hint_type]} characters")
        if "```" in hint or "~~~" in hint:
            return Verdict(False, "code block")
        for line in hint.splitlines():
            if any(p.search(line) for p in _CODE_LINE):
                return Verdict(False, f"code-like line: {line.strip()[:80]!r}")
        for span in _INLINE.findall(hint):
            if len(span) > 40 or _STATEMENT.search(span):
                return Verdict(False, f"inline code: {span[:80]!r}")
        for secret in self.secrets:
            if secret in hint:
                return Verdict(False, "contains a secret")
        for value in self.hidden:
            if _contains(hint, value):
                return Verdict(False, "contains a hidden test value")
        if numbers.values(hint) & self.hidden_numbers:
            # The reason goes back to the model on regeneration: never the value itself.
            return Verdict(False, "contains a hidden test value (a number, by value)")
        hint_ngrams = ngrams(tokens(hint))
        for label, source in (("the fix", private_fix or ""), ("the reference solution", self.reference)):
            leaked = (ngrams(tokens(source)) - self.visible_ngrams) & hint_ngrams
            if len(leaked) > MAX_LEAKED_NGRAMS:
                return Verdict(False, f"overlaps with {label} ({len(leaked)} shared 4-grams)")
        return Verdict(True, "ok", hint)


def _contains(text: str, value: str) -> bool:
    """`value` occurs in `text` as a whole token run (12 does not match 123)."""
    pattern = (r"(?<![\w])" if value[0].isalnum() or value[0] == "_" else "") + re.escape(value) \
        + (r"(?![\w])" if value[-1].isalnum() or value[-1] == "_" else "")
    return re.search(pattern, text) is not None
