"""GradeReport -> what the student reads: HTML for the LMS `msg`, text for the CLI.

Everything in a report that came from the student's code (names, printed
output, actual values, messages, tracebacks, the AI hint) is untrusted. The
HTML is built so that, whatever those strings hold:

- it has exactly one root element (``<div class="xgrader-feedback">``) and is
  well-formed XML (the LMS embeds it in XML-ish templates);
- every untrusted string is cleaned (control characters, lone surrogates,
  XML-invalid code points, bidi overrides removed) and escaped with
  ``html.escape(quote=True)``; untrusted text never lands in an attribute,
  and there is no ``<script>``, no event attribute; the one link is the AI
  hint's student page, built and signed by xgrader (http or https only);
- it is bounded: each field is capped (with a visible "truncated" note), and the
  total is capped by adding whole, closed pieces until the budget is spent; the
  final string is never cut.

Hidden tests show their display name (chosen by the handler) and pass/fail only.
"""

from __future__ import annotations

import dataclasses
import difflib
import html
import re
from collections.abc import Callable
from dataclasses import dataclass

from xgrader.report import CriterionReport, Explanation, GradeReport, Outcome, StaffAnswer, TestReport, TestStatus
from xgrader.backends.base import clean_text

# Beyond clean_text: C1 controls, XML-invalid U+FFFE/U+FFFF, and bidi
# embedding/override/isolate controls (they can make feedback lie visually).
_EXTRA_STRIP = re.compile(r"[\x80-\x9f\ufffe\uffff\u202a-\u202e\u2066-\u2069]")

HINT_LABEL = "AI-generated hint — may be wrong"
HINT_LINK_TEXT = "Was this hint helpful? Rate it, or ask the course staff"
ANSWER_LABEL = "Answer from the course staff to your question about an AI hint"


@dataclass(frozen=True)
class Caps:
    """Size budgets, in characters of rendered output."""

    field: int = 2000          # one input/expected/actual/output/message/traceback
    field_lines: int = 30      # leading lines of one such field
    diff_lines: int = 40       # lines of a unified diff
    traceback_lines: int = 40  # trailing lines of a traceback
    block: int = 16_000        # one rendered test/explanation/hint (fields shrink to fit)
    total: int = 60_000        # the whole message
    explanations: int = 10     # explanations shown
    long_output: int = 200     # chars (or 6+ lines) from which a diff is added


DEFAULT_CAPS = Caps()

STATUS_TEXT = {
    TestStatus.passed: "passed",
    TestStatus.failed: "failed",
    TestStatus.error: "failed: your code raised an error",
    TestStatus.timeout: "failed: time limit exceeded",
    TestStatus.missing: "failed: did not finish",
    TestStatus.not_run: "failed: not run (see the notes above)",
}

OUTCOME_TEXT = {
    Outcome.passed: "",
    Outcome.partial: "",
    Outcome.failed: "",
    Outcome.syntax_error: "syntax error",
    Outcome.missing_function: "missing function",
    Outcome.runtime_error: "your code raised an error",
    Outcome.time_limit: "time limit exceeded",
    Outcome.memory_limit: "memory limit exceeded",
    Outcome.output_limit: "output limit exceeded",
    Outcome.bad_submission: "your submission could not be read",
    Outcome.error: "not graded",
}


# ---------------------------------------------------------------- text helpers

def clean(text: object) -> str:
    """Untrusted value -> text safe to put in XML character data once escaped."""
    return _EXTRA_STRIP.sub("", clean_text(str(text)))


def _fmt(x: float) -> str:
    return f"{round(x, 2):g}"


def summary_line(report: GradeReport) -> str:
    """'7/10 points — 3 of 5 tests passed' (plus the verdict when it explains more)."""
    if report.outcome is Outcome.error:
        head = "Not graded"
    else:
        head = f"{_fmt(report.score)}/{_fmt(report.max_score)} points"
    parts = [head]
    if report.tests:
        n = len(report.tests)
        parts.append(f"{report.passed_count} of {n} test{'s' if n != 1 else ''} passed")
    line = " — ".join(parts)
    extra = OUTCOME_TEXT.get(report.outcome, "")
    if extra and report.outcome is not Outcome.error:
        line += f" ({extra})"
    return line


def _cap_text(text: str, limit: int) -> tuple[str, int]:
    """(text cut to `limit` chars, chars dropped)."""
    if len(text) <= limit:
        return text, 0
    return text[:limit], len(text) - limit


def _tail_lines(text: str, keep: int) -> tuple[str, int]:
    lines = text.splitlines()
    if len(lines) <= keep:
        return text, 0
    return "\n".join(lines[-keep:]), len(lines) - keep


def caret_line(source: str, column: int | None) -> str | None:
    """A '^' under 1-based `column`, keeping tabs so it lines up."""
    if not column or column < 1:
        return None
    prefix = source[: column - 1]
    return "".join(c if c == "\t" else " " for c in prefix) + "^"


def compact_diff(expected: str, actual: str, max_lines: int) -> tuple[list[str], int]:
    """Unified diff (1 line of context) of expected vs actual, at most max_lines."""
    lines = list(difflib.unified_diff(expected.splitlines(), actual.splitlines(),
                                      "expected", "your output", n=1, lineterm=""))
    if len(lines) <= max_lines:
        return lines, 0
    return lines[:max_lines], len(lines) - max_lines


def _is_long(text: str, caps: Caps) -> bool:
    return len(text) >= caps.long_output or text.count("\n") >= 5


# ------------------------------------------------------ content model (shared)
# Both renderers walk the same neutral blocks, so HTML and text say the same.

@dataclass(frozen=True)
class Part:
    label: str
    text: str           # cleaned, capped
    dropped: int = 0    # chars (or lines) cut
    unit: str = "characters"
    pre: bool = True
    link: str | None = None   # an http(s) URL xgrader built (the hint page): text becomes its anchor
    image: str | None = None  # a data:image/png URI xgrader drew (image kind): text becomes its alt


@dataclass(frozen=True)
class Block:
    kind: str                       # "explanation" | "test" | "hidden" | "hint" | "answer"
    heading: str
    fields: tuple[Part, ...] = ()


def _short(text: str, limit: int = 300) -> str:
    """A heading (test name, explanation title): one bounded line."""
    text = " ".join(clean(text).split())
    return text if len(text) <= limit else text[:limit] + "… [truncated]"


def _head_lines(text: str, keep: int) -> tuple[str, int]:
    lines = text.split("\n")
    if len(lines) <= keep:
        return text, 0
    return "\n".join(lines[:keep]), len(lines) - keep


def _field(label: str, value: str | None, caps: Caps, pre: bool = True) -> Part | None:
    if value is None:
        return None
    full = clean(value)
    text, lines_dropped = _head_lines(full, caps.field_lines)
    text, chars_dropped = _cap_text(text, caps.field)
    if lines_dropped and not chars_dropped:
        return Part(label, text, lines_dropped, unit="lines", pre=pre)
    return Part(label, text, len(full) - len(text), pre=pre)


def _explanation_block(e: Explanation, caps: Caps) -> Block:
    fields: list[Part | None] = []
    if e.detail:
        fields.append(_field("", e.detail, caps, pre=False))
    if e.source_line:
        src, dropped = _cap_text(clean(e.source_line).rstrip("\n"), caps.field)
        where = _short(e.location[:1].upper() + e.location[1:]) if e.location else \
            f"Line {e.line}" if e.line else "Your code"
        caret = caret_line(src, e.column) if not dropped else None
        fields.append(Part(where, src + ("\n" + caret if caret else ""), dropped))
    if e.traceback:
        tb, dropped_lines = _tail_lines(clean(e.traceback).rstrip("\n"), caps.traceback_lines)
        tb, dropped = _cap_text(tb, caps.field)
        if dropped_lines:
            fields.append(Part("Traceback (last lines)", tb, dropped_lines, unit="lines"))
        else:
            fields.append(Part("Traceback", tb, dropped))
    heading = _short(e.title) + (f" ({_short(e.marks, 100)})" if e.marks else "")
    return Block("explanation", heading, tuple(f for f in fields if f))


def _criterion_block(report: GradeReport, c: CriterionReport) -> Block:
    """One rubric line: the criterion's points, then its feedback items by title."""
    tests = f", {c.passed} of {c.total} test{'s' if c.total != 1 else ''} passed" if c.total else ""
    heading = f"{_short(c.title)}: {_fmt(c.points)}/{_fmt(c.max_points)} points{tests}"
    items = [report.explanations[i] for i in c.items if 0 <= i < len(report.explanations)]
    fields = tuple(Part("", "• " + _short(e.title) + (f" ({_short(e.marks, 100)})" if e.marks else ""),
                        pre=False) for e in items[:10])
    if not items and c.points < c.max_points:
        whole = any(not e.tests for e in report.explanations)   # a syntax error, a missing file...
        fields = (Part("", "See the notes below." if whole else "No specific note: see the tests below.",
                       pre=False),)
    return Block("criterion", heading, fields)


def _points(t: TestReport) -> str:
    return f"{_fmt(t.points)} point{'s' if t.points != 1 else ''}"


def _test_block(t: TestReport, caps: Caps) -> Block:
    name = _short(t.name)
    if not t.visible:
        # Pass/fail only: no status detail, no timing, no values, no messages.
        verdict = "passed" if t.status is TestStatus.passed else "failed"
        return Block("hidden", f"{name} (hidden): {verdict}")
    heading = f"{name}: {STATUS_TEXT[t.status]} ({_points(t)})"
    if t.status is TestStatus.passed:
        # What was checked is enough: the result equals the expected value.
        return Block("test", heading, tuple(f for f in (_field("Input", t.input, caps),
                                                         _field("Expected", t.expected, caps)) if f))
    fields: list[Part | None] = [
        _field("Input", t.input, caps),
        _field("Expected", t.expected, caps),
        _field("Your result", t.actual, caps),
    ]
    if t.expected is not None and t.actual is not None:
        exp, act = clean(t.expected), clean(t.actual)
        if exp != act and exp.split() == act.split():
            fields.append(Part("", "Your result differs only in spaces or line breaks.", pre=False))
        elif _is_long(exp, caps) or _is_long(act, caps):
            lines, more = compact_diff(exp, act, caps.diff_lines)
            if lines:
                text, dropped = _cap_text("\n".join(lines), caps.field)
                fields.append(Part("Difference", text, more or dropped, "lines" if more else "characters"))
    fields.append(_field("Message", t.message, caps))
    fields.append(_field("Printed output", t.output, caps))
    if t.image and _DATA_PNG.fullmatch(t.image) and len(t.image) <= caps.field * 4:
        fields.append(Part("Difference", "expected image in grey, differing pixels in red", pre=False,
                           image=t.image))
    return Block("test", heading, tuple(f for f in fields if f))


def _hint_block(report: GradeReport, caps: Caps) -> Block | None:
    if not report.hint:
        return None
    text, dropped = _cap_text(clean(report.hint), caps.field * 2)
    parts = [Part("", text, dropped, pre=True)]
    if report.hint_link and report.hint_link.startswith(("https://", "http://")):
        parts.append(Part("", HINT_LINK_TEXT, pre=False, link=clean(report.hint_link)))
    return Block("hint", HINT_LABEL, tuple(parts))


def _answer_block(answer: StaffAnswer, caps: Caps) -> Block:
    fields = [_field("Your question", answer.question, caps) if answer.question else None,
              _field("Answer", answer.answer, caps)]
    return Block("answer", ANSWER_LABEL, tuple(f for f in fields if f))


def _truncated_note(dropped: int, unit: str) -> str:
    return f"[truncated: {dropped} more {unit} not shown]"


# ------------------------------------------------------------------------ HTML

def _e(text: str) -> str:
    return html.escape(text, quote=True)


_PRE = '<pre style="white-space:pre-wrap">'
# The only image feedback embeds: a PNG as base64, nothing that could carry markup.
_DATA_PNG = re.compile(r"data:image/png;base64,[A-Za-z0-9+/]+={0,2}")


def _html_field(f: Part) -> str:
    if f.link:
        return f'<p class="xgrader-hint-link"><a href="{_e(f.link)}" target="_blank" rel="noopener noreferrer">' \
               f"{_e(f.text)}</a></p>"
    label = f"<p><strong>{_e(f.label)}:</strong></p>" if f.label else ""
    if f.image:
        return f'{label}<p><img src="{f.image}" alt="{_e(f.text)}"/></p>'
    note = _e(_truncated_note(f.dropped, f.unit)) if f.dropped else ""
    if f.pre:
        # The note goes outside <pre> so it is never mistaken for output.
        body = f"{_PRE}{_e(f.text)}</pre>"
        if note:
            body += f'<p class="xgrader-truncated"><em>{note}</em></p>'
    else:
        body = f"<p>{_e(f.text)}" + (f'<br/><em class="xgrader-truncated">{note}</em>' if note else "") + "</p>"
    return label + body


def _html_block(b: Block) -> str:
    if b.kind == "hidden":
        return f'<li class="xgrader-hidden">{_e(b.heading)}</li>'
    inner = "".join(_html_field(f) for f in b.fields)
    if b.kind == "test":
        return f'<li class="xgrader-test"><p><strong>{_e(b.heading)}</strong></p>{inner}</li>'
    return f'<div class="xgrader-{b.kind}"><p><strong>{_e(b.heading)}</strong></p>{inner}</div>'


def _html_line(kind: str, text: str) -> str:
    return f'<p class="xgrader-{kind}">{_e(text)}</p>'


def render_html(report: GradeReport, caps: Caps = DEFAULT_CAPS) -> str:
    """The LMS `msg`: one root <div>, well-formed XML, at most caps.total characters."""
    fmt = _Format(block=_html_block, line=_html_line, sep="",
                  tests=lambda items: '<ul class="xgrader-tests">' + "".join(items) + "</ul>",
                  tests_overhead=len('<ul class="xgrader-tests"></ul>'),
                  open='<div class="xgrader-feedback">', close="</div>")
    head = f'<p class="xgrader-summary"><strong>{_e(clean(summary_line(report)))}</strong></p>'
    return _layout(report, caps, fmt, head)


# ------------------------------------------------------------------------ text

def _text_field(f: Part) -> str:
    if f.link:
        return f"  {f.text}: {f.link}"
    if f.image:
        return f"  {f.label}: an image in the LMS ({f.text})"
    out = []
    if f.label:
        out.append(f"  {f.label}:")
    indent = "    " if f.pre else "  "
    out += [indent + line for line in (f.text.splitlines() or [""])]
    if f.dropped:
        out.append(indent + _truncated_note(f.dropped, f.unit))
    return "\n".join(out)


def _text_block(b: Block) -> str:
    if b.kind == "hidden":
        return f"- {b.heading}"
    mark = {"test": "- ", "explanation": "! ", "hint": "? ", "answer": "> ", "criterion": "= "}[b.kind]
    return "\n".join([mark + b.heading] + [_text_field(f) for f in b.fields])


def render_text(report: GradeReport, caps: Caps = DEFAULT_CAPS) -> str:
    """The same content as render_html, as plain text for the terminal."""
    fmt = _Format(block=_text_block, line=lambda _kind, text: text, sep="\n",
                  tests=lambda items: "\n".join(["Tests:", *items]), tests_overhead=len("Tests:\n"),
                  open="", close="\n")
    return _layout(report, caps, fmt, clean(summary_line(report)))


# ---------------------------------------------------------------------- layout

@dataclass(frozen=True)
class _Format:
    block: Callable[[Block], str]
    line: Callable[[str, str], str]          # (kind, text) -> a one-line piece
    sep: str                                 # between pieces and between test items
    tests: Callable[[list[str]], str]        # test items -> the tests piece
    tests_overhead: int
    open: str
    close: str


def _shrunk(caps: Caps) -> Caps:
    return dataclasses.replace(caps, field=caps.field // 4, field_lines=max(3, caps.field_lines // 3),
                               diff_lines=max(5, caps.diff_lines // 3),
                               traceback_lines=max(5, caps.traceback_lines // 3))


def _bounded(make: Callable[[Caps], Block], caps: Caps, fmt: _Format) -> str:
    """One block rendered within caps.block: escaping can grow text up to 6x,
    so the fields shrink until the rendered piece fits."""
    current = caps
    piece = fmt.block(make(current))
    while len(piece) > caps.block and current.field > 50:
        current = _shrunk(current)
        piece = fmt.block(make(current))
    return piece


def _layout(report: GradeReport, caps: Caps, fmt: _Format, head: str) -> str:
    """Whole, closed pieces in order until caps.total is spent; then a note.
    Summary, title, hint and explanations come before tests."""
    def cost(piece: str) -> int:
        return len(piece) + len(fmt.sep)

    note_room = cost(fmt.line("truncated", _truncated_note(10**9, "tests (feedback size limit)")))
    pieces = [head]
    if report.title:
        pieces.append(fmt.line("title", _short(report.title)))
    if report.skills_practised:
        pieces.append(fmt.line("skills", _short("Skills practised: " + ", ".join(report.skills_practised))))
    budget = (caps.total - len(fmt.open) - len(fmt.close) - sum(map(cost, pieces))
              - fmt.tests_overhead - 3 * note_room)
    notes: list[str] = []

    hint = ""
    if report.hint:
        hint = _bounded(lambda c: _hint_block(report, c), caps, fmt)
        if cost(hint) > budget:
            hint = ""
            notes.append(fmt.line("truncated", "[truncated: the AI hint is not shown (feedback size limit)]"))
        else:
            budget -= cost(hint)

    if report.criteria:
        pieces.append(fmt.line("rubric-title", "Rubric:"))
        budget -= cost(pieces[-1])
        for c in report.criteria[:30]:
            piece = _bounded(lambda _caps, c=c: _criterion_block(report, c), caps, fmt)
            if cost(piece) > budget:
                break
            pieces.append(piece)
            budget -= cost(piece)

    for answer in report.staff_answers:
        piece = _bounded(lambda c, a=answer: _answer_block(a, c), caps, fmt)
        if cost(piece) > budget:
            notes.append(fmt.line("truncated", "[truncated: a staff answer is not shown (feedback size limit)]"))
            continue
        pieces.append(piece)
        budget -= cost(piece)

    shown_expl = 0
    for e in report.explanations[: caps.explanations]:
        piece = _bounded(lambda c, e=e: _explanation_block(e, c), caps, fmt)
        if cost(piece) > budget:
            break
        pieces.append(piece)
        budget -= cost(piece)
        shown_expl += 1
    if shown_expl < len(report.explanations):
        pieces.append(fmt.line("truncated", _truncated_note(len(report.explanations) - shown_expl, "notes")))

    hidden = [t for t in report.tests if not t.visible]
    if hidden:
        passed = sum(t.status is TestStatus.passed for t in hidden)
        line = fmt.line("hidden-summary", f"Hidden tests: {passed} of {len(hidden)} passed "
                                          "(their inputs and results are not shown).")
        pieces.append(line)
        budget -= cost(line)
    items: list[str] = []
    for t in report.tests:
        piece = _bounded(lambda c, t=t: _test_block(t, c), caps, fmt)
        if cost(piece) > budget:
            break
        items.append(piece)
        budget -= cost(piece)
    if items:
        pieces.append(fmt.tests(items))
    if len(items) < len(report.tests):
        pieces.append(fmt.line("truncated", _truncated_note(len(report.tests) - len(items),
                                                           "tests (feedback size limit)")))
    pieces += notes
    if hint:
        pieces.append(hint)
    return fmt.open + fmt.sep.join(pieces) + fmt.close
