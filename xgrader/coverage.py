"""Feedback coverage: which submissions got feedback they can act on, per
criterion, and which got nothing specific (`xgrader coverage`, docs/authoring.md).

Also the per-submission records the gradebook JSON of `xgrader batch` holds
(and `coverage` reads back), and the staff view of `xgrader grade --staff`.
Staff data (hidden tests' inputs, expected and actual values, errors) is
read here from TestReport.evidence; it only ever goes to staff outputs,
never into the student's `msg`.

A feedback item is *specific* when it names a line, a name, a type, a
behaviour or an instructor's signature (Explanation.specific), or when it is
a visible failing test (its input, expected and actual values are shown).
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from typing import Any

from xgrader import feedback
from xgrader.report import GradeReport, TestStatus

STAFF_CHARS = 2000
WHOLE = "(whole assignment)"


def _cap(value: Any, limit: int = STAFF_CHARS) -> str | None:
    if value is None:
        return None
    text = feedback.clean(value)
    return text if len(text) <= limit else text[:limit] + " [...]"


def staff_detail(test: Any) -> dict[str, Any] | None:
    ev = test.evidence
    if ev is None:
        return None
    err = ev.error or {}
    out = {
        "input": _cap(ev.input), "expected": _cap(ev.expected), "actual": _cap(ev.actual),
        "printed": _cap(ev.output) or None, "mutated_argument": ev.mutated or None,
        "error": _cap(f"{err.get('type')}: {err.get('message') or ''}") if err else None,
        "traceback": _cap(err.get("traceback")) if err else None,
        "where_stopped": ev.sample if test.status is TestStatus.timeout else None,
        "test_message": _cap(ev.message),
    }
    return {k: v for k, v in out.items() if v not in (None, "", [])}


def record(name: str, report: GradeReport | None, error: str | None = None, seconds: float = 0.0) -> dict[str, Any]:
    """One submission in the gradebook JSON: score, tests (with the staff
    view of each), feedback items, rubric, and the exact student `msg`."""
    if report is None:
        return {"file": name, "seconds": round(seconds, 3), "error": error, "score": None, "correct": None,
                "outcome": "not graded", "tests": [], "explanations": [], "feedback": [], "criteria": []}
    return {
        "file": name, "seconds": round(seconds, 3), "error": error,
        "score": report.score, "max": report.max_score, "correct": report.correct,
        "outcome": report.outcome.value,
        "tests": [{"name": t.name, "test_id": t.test_id, "status": t.status.value, "points": t.points,
                   "weight": t.weight, "visible": t.visible, "staff": staff_detail(t)} for t in report.tests],
        "explanations": [e.title for e in report.explanations],
        "feedback": [{"title": e.title, "signature": e.signature, "specific": e.specific, "tests": e.tests,
                      "location": e.location, "marks": e.marks} for e in report.explanations],
        "criteria": [{**c.model_dump(), "tests": c.tests} for c in report.criteria],
        "visible_failures": sum(t.visible and t.status is not TestStatus.passed for t in report.tests),
        "msg": feedback.render_html(report),
    }


# ----------------------------------------------------------------- coverage

def _specific_items(rec: dict[str, Any], criterion: dict[str, Any] | None, tests_of: set[str]) -> int:
    items = rec.get("feedback") or []
    if criterion is None:
        chosen = items
    else:
        wanted = set(criterion.get("items") or [])
        # Notes about the whole submission (syntax error, missing function, a load error) count for every criterion.
        chosen = [e for i, e in enumerate(items) if i in wanted or not e.get("tests")]
    n = sum(bool(e.get("specific")) for e in chosen)
    for t in rec.get("tests") or []:
        if t.get("visible") and t.get("status") != "passed" and (criterion is None or t.get("test_id") in tests_of):
            n += 1
    return n


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per criterion (or the whole assignment): how many submissions that
    lost points there got at least one specific item, the average number of
    items, how often each signature fired, and who got nothing specific."""
    graded = [r for r in records if r.get("outcome") != "not graded"]
    titles = []
    for r in graded:
        for c in r.get("criteria") or []:
            if c["title"] not in titles:
                titles.append(c["title"])
    rows = []
    for title in [WHOLE, *titles]:
        wrong, nothing, counts = [], [], []
        for r in graded:
            if title == WHOLE:
                crit, lost, tests_of = None, not r.get("correct"), set()
            else:
                crit = next((c for c in r.get("criteria") or [] if c["title"] == title), None)
                if crit is None:
                    continue
                lost = crit["points"] < crit["max_points"]
                tests_of = set(crit.get("tests") or [])
            if not lost:
                continue
            wrong.append(r["file"])
            n = _specific_items(r, crit, tests_of)
            counts.append(n)
            if n == 0:
                nothing.append(r["file"])
        with_some = len(wrong) - len(nothing)
        rows.append({
            "criterion": title, "submissions": len(graded), "lost_points": len(wrong),
            "with_specific": with_some, "share": round(with_some / len(wrong), 4) if wrong else 1.0,
            "average_items": round(sum(counts) / len(counts), 2) if counts else 0.0,
            "nothing_specific": nothing,
        })
    fired: dict[str, int] = {}
    for r in graded:
        for name in {e.get("signature") for e in r.get("feedback") or [] if e.get("signature")}:
            fired[name] = fired.get(name, 0) + 1
    return {
        "submissions": len(records), "graded": len(graded),
        "not_graded": [r["file"] for r in records if r.get("outcome") == "not graded"],
        "criteria": rows,
        "signatures": dict(sorted(fired.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


# ---------------------------------------------------------------------- HTML

_ALLOWED = {"div", "p", "strong", "em", "pre", "ul", "li", "br"}
_DATA_PNG = re.compile(r"data:image/png;base64,[A-Za-z0-9+/]+={0,2}")


def _inert_element(el: ET.Element) -> bool:
    """One element as feedback.render_html writes it: inert tags with fixed
    attributes, the hint page's http(s) link, a data: PNG (image kind)."""
    attrs = el.attrib
    if el.tag == "a":
        return set(attrs) <= {"href", "target", "rel"} and attrs.get("href", "").startswith(("https://", "http://"))
    if el.tag == "img":
        return set(attrs) <= {"src", "alt"} and _DATA_PNG.fullmatch(attrs.get("src", "")) is not None
    return el.tag in _ALLOWED and set(attrs) <= {"class", "style"} and \
        all(v.startswith(("xgrader-", "white-space:")) for v in attrs.values())


def _inert(msg: str) -> str:
    """A feedback msg embedded as markup only if it is one of ours; anything
    else (a gradebook edited by hand) is shown as text."""
    try:
        ok = all(_inert_element(el) for el in ET.fromstring(msg).iter())
    except (ET.ParseError, TypeError):
        ok = False
    return msg if ok else f"<pre>{html.escape(str(msg))}</pre>"


def render_html(summary: dict[str, Any], records: list[dict[str, Any]], title: str) -> str:
    e = html.escape
    anchors = {r["file"]: f"fb-{i}" for i, r in enumerate(records)}
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>Feedback coverage: {e(title)}</title>",
           "<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
           "td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left}th{background:#eee}"
           ".low{color:#a00;font-weight:bold}.sub{border:1px solid #ccc;margin:1em 0;padding:.5em 1em}"
           "</style></head><body>",
           f"<h1>Feedback coverage: {e(title)}</h1>",
           f'<p id="totals">{summary["graded"]} of {summary["submissions"]} submissions graded.</p>',
           '<h2>Per criterion</h2><table id="criteria"><thead><tr><th>criterion</th><th>lost points</th>'
           "<th>with a specific item</th><th>share</th><th>average items</th>"
           "<th>nothing specific</th></tr></thead><tbody>"]
    for row in summary["criteria"]:
        cls = ' class="low"' if row["share"] < 0.9 else ""
        links = ", ".join(f'<a href="#{anchors[f]}">{e(f)}</a>' for f in row["nothing_specific"])
        out.append(f'<tr class="criterion"><td>{e(row["criterion"])}</td><td>{row["lost_points"]}</td>'
                   f'<td>{row["with_specific"]}</td><td{cls}>{row["share"] * 100:.1f}%</td>'
                   f'<td>{row["average_items"]:.2f}</td><td>{links or "none"}</td></tr>')
    out.append('</tbody></table><h2>Signatures fired</h2><table id="signatures"><thead><tr><th>signature</th>'
               "<th>submissions</th></tr></thead><tbody>")
    for name, n in summary["signatures"].items():
        out.append(f'<tr class="signature"><td>{e(name)}</td><td>{n}</td></tr>')
    out.append("</tbody></table>")
    nothing = sorted({f for row in summary["criteria"] for f in row["nothing_specific"]})
    out.append(f'<h2>Nothing specific ({len(nothing)})</h2><ul id="nothing">')
    out += [f'<li><a href="#{anchors[f]}">{e(f)}</a></li>' for f in nothing]
    out.append('</ul><h2>Every submission\'s feedback</h2>')
    for r in records:
        score = "not graded" if r.get("score") is None else f'{r["score"]:g}/{r.get("max", 0):g}'
        out.append(f'<div class="sub" id="{anchors[r["file"]]}"><h3>{e(r["file"])}: {e(score)} '
                   f'({e(r.get("outcome", ""))})</h3>')
        out.append(_inert(r["msg"]) if r.get("msg") else f'<p>{e(str(r.get("error") or ""))}</p>')
        out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)


def render_text(summary: dict[str, Any]) -> str:
    lines = []
    for row in summary["criteria"]:
        lines.append(f'{row["criterion"]}: {row["with_specific"]}/{row["lost_points"]} submissions that lost '
                     f'points got a specific item ({row["share"] * 100:.1f}%), {row["average_items"]:.2f} '
                     "items on average")
        if row["nothing_specific"]:
            lines.append("  nothing specific: " + ", ".join(row["nothing_specific"]))
    if summary["signatures"]:
        lines.append("signatures fired: " + ", ".join(f"{k} {v}" for k, v in summary["signatures"].items()))
    if summary["not_graded"]:
        lines.append("not graded: " + ", ".join(summary["not_graded"]))
    return "\n".join(lines)


def staff_text(report: GradeReport) -> str:
    """`xgrader grade --staff`: every test with what really happened, next to
    what the student is told. For course staff only."""
    lines = ["", "=" * 72, "Staff view: hidden values below; never sent to the student", "=" * 72]
    for i, e in enumerate(report.explanations):
        lines.append(f"note {i + 1}: [{e.signature or '-'}{', specific' if e.specific else ''}] {e.title}"
                     + (f" ({e.marks})" if e.marks else ""))
    for t in report.tests:
        seen = "visible" if t.visible else "hidden"
        lines.append(f"- {t.name} ({seen}, {t.test_id or t.name}): {t.status.value}, {t.points:g} points")
        notes = [str(i + 1) for i, e in enumerate(report.explanations) if (t.test_id or t.name) in e.tests]
        if notes:
            lines.append(f"    student is told: note {', '.join(notes)}")
        for key, value in (staff_detail(t) or {}).items():
            text = str(value).replace("\n", "\n      ")
            lines.append(f"    {key}: {text}")
    return "\n".join(lines)
