"""Numbers in free text, by value: the hint guard compares a hint's numbers
with the hidden tests' numbers as values, so a model cannot leak 33.83 as
`33.830`, 1000 as `1e3`, `1,000`, `1 000` or `one thousand`.

Every plausible reading of a piece of text is returned (`1,5` is 1.5 and
also 1 and 5; `3 100` is 3100 and also 3 and 100): the guard rejects on any
match, and a rejected reply only costs one regeneration.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# Digits, optionally grouped by thousands (, _ ' space, no-break and thin
# spaces), an optional decimal part (. or ,), an optional exponent.
_SEP = r"[,_'\u00a0\u202f\u2009 ]"
_NUMBER = re.compile(
    r"(?<![\w.])[-+\u2212]?"
    rf"(?:\d{{1,3}}(?:{_SEP}\d{{3}})+|\d+)"
    r"(?:[.,]\d+)?"
    r"(?:[eE][-+]?\d+)?"
    r"(?![\w])"
    r"|(?<![\w.])[-+\u2212]?\.\d+(?:[eE][-+]?\d+)?(?![\w])"
)
_PLAIN = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_WORD = re.compile(r"[a-z]+", re.I)
_MAX_WORDS = 12


def values(text: str) -> set[Decimal]:
    """Every number `text` may state, as absolute values (a sign does not
    hide a value: -31337 leaks 31337)."""
    out: set[Decimal] = set()
    for match in _NUMBER.finditer(text):
        out |= _readings(match.group(0).lstrip("-+\u2212"))
    out |= _word_numbers(text)
    return out


def canonical(value: Decimal) -> str:
    """The shortest plain text of a value (33.830 -> 33.83, 1E+3 -> 1000)."""
    text = format(value.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _decimal(text: str) -> Decimal | None:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if not value.is_finite() or abs(value.adjusted()) > 40:
        return None
    return abs(value)


def _readings(token: str) -> set[Decimal]:
    out: set[Decimal] = set()

    def add(text: str) -> None:
        value = _decimal(text)
        if value is not None:
            out.add(value)

    add(re.sub(_SEP, "", token))                         # 1,000 / 1 000 / 1_000 / 1e3
    if re.fullmatch(r"\d+,\d+(?:[eE][-+]?\d+)?", token):
        add(token.replace(",", "."))                     # a decimal comma: 33,83
    for part in _PLAIN.findall(re.sub(_SEP, " ", token)):
        add(part)                                        # each part alone: "3 100 times"
    return out


def _word_numbers(text: str) -> set[Decimal]:
    """Integers spelled in English words: "forty-two", "one thousand two
    hundred and five", "a hundred"."""
    words = [(m.group(0).lower(), m.start(), m.end()) for m in _WORD.finditer(text)]

    def adjacent(i: int) -> bool:   # only spaces or hyphens since the previous word
        return i > 0 and text[words[i - 1][2]:words[i][1]].strip(" -") == ""

    def numeric(i: int) -> bool:
        word = words[i][0]
        if _is_number_word(word):
            return True
        nxt = i + 1 < len(words) and adjacent(i + 1)
        if word == "a":      # "a hundred", "a thousand"
            return nxt and words[i + 1][0] in _SCALES
        if word == "and":    # "two hundred and five"
            return nxt and adjacent(i) and _is_number_word(words[i - 1][0]) and _is_number_word(words[i + 1][0])
        return False

    out: set[Decimal] = set()
    run: list[str] = []

    def flush() -> None:
        value = _parse_words([w for w in run if w != "and"])
        if value is not None:
            out.add(Decimal(value))
        run.clear()

    for i, (word, _, _) in enumerate(words):
        if run and (not adjacent(i) or word == "a" or len(run) >= _MAX_WORDS):
            flush()
        if numeric(i):
            run.append(word)
        elif run:
            flush()
    if run:
        flush()
    return out


def _is_number_word(word: str) -> bool:
    return word in _UNITS or word in _TENS or word in _SCALES


def _parse_words(words: list[str]) -> int | None:
    if not words or words == ["a"]:
        return None
    total, current = 0, 0
    for word in words:
        if word == "a":
            current = 1
        elif word in _UNITS:
            current += _UNITS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        else:
            total += max(current, 1) * _SCALES[word]
            current = 0
    return total + current
