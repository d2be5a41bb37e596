"""HTML of the hint pages: the student page of one hint, the staff queue and
one request. Plain HTML forms, no JavaScript. Every value is escaped with
html.escape (notes, hints, code, answers and feedback are untrusted text);
only the fixed markup below is HTML."""

from __future__ import annotations

import datetime
import time
from html import escape
from typing import Iterable

from xgrader.feedback import HINT_LABEL
from xgrader.hints.records import Delivery, Escalation, EscalationState, Rating

STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}"
    "main{max-width:52em;margin:0 auto;padding:1em 1.2em;background:#fff;min-height:100vh}"
    "blockquote{white-space:pre-wrap;overflow-wrap:anywhere;margin:.5em 0;padding:.6em .9em;"
    "border-left:4px solid #8aa;background:#f3f7f7}"
    "pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f4f4f4;padding:.6em;font-size:13px}"
    ".label{color:#a33;font-size:13px;margin:0}.muted{color:#666;font-size:13px}"
    "button{font:inherit;padding:.35em .9em;margin:.2em .4em .2em 0}"
    "textarea{width:100%;box-sizing:border-box;font:inherit}"
    "table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;"
    "vertical-align:top;overflow-wrap:anywhere}th{background:#eee}.error{color:#a00}"
)


def e(value: object) -> str:
    return escape(str(value), quote=True)


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def ago(ts: float, now: float | None = None) -> str:
    s = max(0, int((now or time.time()) - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit}"
    return f"{s} s"


def page(title: str, body: str) -> str:
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{e(title)}</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>")


def refusal(status: int, message: str, back: str | None = None) -> str:
    link = f"<p><a id='back' href='{e(back)}'>Back to the hint</a></p>" if back else ""
    return page(f"Not done ({status})", f"<h1>Not done</h1><p id='error' class='error'>{e(message)}</p>{link}")


def _hidden(fields: dict[str, str]) -> str:
    return "".join(f"<input type='hidden' name='{e(k)}' value='{e(v)}'>" for k, v in fields.items())


# -- the student page -------------------------------------------------------------------

def student(d: Delivery, rating: Rating | None, esc: Escalation | None, action: str, form: dict[str, str],
            note_max: int, asks_left: int, asks_used: int) -> str:
    parts = [f"<h1>Your hint for {e(d.title or d.assignment)}</h1>",
             f"<p class='label'>{e(HINT_LABEL)}</p>",
             f"<blockquote id='hint'>{e(d.hint)}</blockquote>",
             f"<p class='muted'>Hint given {e(when(d.at))}.</p>"]
    if rating is None:
        parts.append(
            f"<form method='post' action='{e(action)}' id='rate'>{_hidden({**form, 'action': 'rate'})}"
            "<p>Was this hint helpful?</p>"
            "<button id='rate-helpful' name='rating' value='helpful'>Yes, helpful</button>"
            "<button id='rate-unhelpful' name='rating' value='unhelpful'>No, not helpful</button></form>")
    else:
        parts.append(f"<p id='rated'>You rated this hint <strong>{'helpful' if rating.helpful else 'not helpful'}"
                     "</strong>. Thank you.</p>")
    if esc is not None:
        parts.append(_student_escalation(esc))
    elif rating is not None and not rating.helpful:
        if asks_left > 0:
            parts.append(
                f"<form method='post' action='{e(action)}' id='ask'>{_hidden({**form, 'action': 'escalate'})}"
                "<h2>Ask the course staff</h2>"
                f"<p><label for='note'>What is still unclear? (optional, at most {note_max} characters)</label></p>"
                f"<textarea id='note' name='note' rows='6' maxlength='{note_max}'></textarea>"
                "<p><button id='escalate'>Send to the course staff</button></p>"
                f"<p class='muted'>You can ask {asks_left} more time(s) about this assignment. The staff see "
                "your code, your feedback, this hint and your note.</p></form>")
        elif asks_used:   # (no questions at all when the operator set the limit to 0)
            parts.append(f"<p id='quota'>You have asked the course staff {asks_used} time(s) about this "
                         "assignment, which is the limit.</p>")
    return page(f"Hint: {d.title or d.assignment}", "".join(parts))


def _student_escalation(esc: Escalation) -> str:
    status = {
        EscalationState.waiting: "Waiting for the course staff. Come back to this page later: the answer "
                                 "will appear here.",
        EscalationState.claimed: "A member of the course staff is looking at it. Come back to this page later.",
        EscalationState.answered: f"Answered on {when(esc.answered_at)}.",
        EscalationState.closed: (f"Answered on {when(esc.answered_at)}." if esc.answer else
                                 "The course staff closed this request without an answer."),
    }[esc.state]
    out = ["<h2>Your question to the course staff</h2>",
           f"<blockquote id='note-sent'>{e(esc.note) if esc.note else '<em>(no note)</em>'}</blockquote>",
           f"<p id='status'>{e(status)}</p>"]
    if esc.answer:
        out += ["<h2>Answer from the course staff</h2>", f"<blockquote id='answer'>{e(esc.answer)}</blockquote>"]
    return "".join(out)


# -- staff ----------------------------------------------------------------------------

FILTERS = {"open": "Open (waiting or claimed)", "answered": "Answered", "closed": "Closed", "all": "All"}


def _nav(base: str, user: str, dashboard: str | None, logout: str | None) -> str:
    links = [f"<a href='{e(base)}'>Open requests</a>"]
    if dashboard:
        links.append(f"<a href='{e(dashboard)}'>Queue dashboard</a>")
    who = f"signed in as <strong>{e(user)}</strong>"
    out = f"<nav class='muted'>{' · '.join(links)} · {who}"
    if logout:
        out += f" <form method='post' action='{e(logout)}' style='display:inline'><button>log out</button></form>"
    return out + "</nav>"


def staff_list(base: str, user: str, items: Iterable[Escalation], current: str, dashboard: str | None,
               logout: str | None, now: float) -> str:
    tabs = " · ".join(f"<strong>{e(label)}</strong>" if key == current else f"<a href='{e(base)}?state={key}'>"
                      f"{e(label)}</a>" for key, label in FILTERS.items())
    rows = []
    for x in items:
        who = x.claimed_by if x.state is EscalationState.claimed else (x.answered_by or x.closed_by or "")
        rows.append(
            f"<tr><td><a href='{e(base)}{x.id}'>#{x.id}</a></td><td>{e(ago(x.at, now))} ago</td>"
            f"<td>{e(x.assignment)}</td><td class='state'>{e(x.state.value)}</td><td>{e(who)}</td>"
            f"<td>{e(x.hint_type.value)} / {e(x.model)}</td><td>{e(x.note[:200])}</td></tr>")
    table = ("<table id='queue'><tr><th>request</th><th>asked</th><th>assignment</th><th>state</th><th>by</th>"
             "<th>hint type / model</th><th>note</th></tr>" + "".join(rows) + "</table>") if rows else \
        "<p id='empty'>Nothing here.</p>"
    return page("Hint escalations", _nav(base, user, dashboard, logout) + "<h1>Questions about AI hints</h1>"
                f"<p>{tabs}</p><p class='muted'>Oldest first.</p>{table}")


def staff_detail(base: str, user: str, esc: Escalation, d: Delivery | None, rating: Rating | None, action: str,
                 csrf: str, dashboard: str | None, logout: str | None, now: float) -> str:
    form = {"csrf": csrf}

    def button(name: str, label: str) -> str:
        return (f"<form method='post' action='{e(action)}' style='display:inline'>"
                f"{_hidden({**form, 'action': name})}<button id='{name}'>{e(label)}</button></form>")

    state = {EscalationState.waiting: "waiting (nobody has claimed it)",
             EscalationState.claimed: f"claimed by {esc.claimed_by} on {when(esc.claimed_at)}",
             EscalationState.answered: f"answered by {esc.answered_by} on {when(esc.answered_at)}",
             EscalationState.closed: f"closed by {esc.closed_by} on {when(esc.closed_at)}"}[esc.state]
    mine = esc.state is EscalationState.claimed and esc.claimed_by == user
    buttons = []
    if esc.state is EscalationState.waiting:
        buttons.append(button("claim", "Claim"))
    if mine:
        buttons.append(button("release", "Release"))
    if esc.state is not EscalationState.closed and (esc.state is not EscalationState.claimed or mine):
        buttons.append(button("close", "Close"))
    title = d.title if d else esc.assignment
    parts = [_nav(base, user, dashboard, logout),
             f"<h1>Request #{esc.id}: {e(title)}</h1>",
             f"<p id='state'>State: <strong>{e(state)}</strong></p>",
             f"<p class='muted'>Assignment <strong>{e(esc.assignment)}</strong> · asked {e(ago(esc.at, now))} ago "
             f"({e(when(esc.at))}) · student {e(esc.student or '(anonymous)')} · hint decision "
             f"#{esc.audit_id} ({e(esc.hint_type.value)}, model {e(esc.model)})"
             + (f" · submission {e(d.submission_id)} · score {d.score:g}/{d.max_score:g}" if d else "") + "</p>",
             "<p>" + "".join(buttons) + "</p>",
             "<h2>The student's note</h2>",
             f"<blockquote id='note'>{e(esc.note) if esc.note else '<em>(no note)</em>'}</blockquote>",
             "<h2>The hint</h2>", f"<blockquote id='hint'>{e(d.hint if d else '(not kept)')}</blockquote>",
             f"<p class='muted'>Rated {'helpful' if rating and rating.helpful else 'not helpful'}"
             f"{' on ' + when(rating.at) if rating else ''}.</p>",
             "<h2>Answer</h2>"]
    if esc.answer:
        parts.append(f"<blockquote id='answer'>{e(esc.answer)}</blockquote>")
    elif esc.state is not EscalationState.closed and (esc.state is not EscalationState.claimed or mine):
        parts.append(f"<form method='post' action='{e(action)}' id='answer-form'>"
                     f"{_hidden({**form, 'action': 'answer'})}"
                     "<p><label for='answer-text'>Your answer (the student reads it on their hint page)</label></p>"
                     "<textarea id='answer-text' name='text' rows='8' maxlength='10000'></textarea>"
                     "<p><button id='answer-send'>Send the answer</button></p></form>")
    else:
        parts.append(f"<p>Only {e(esc.claimed_by or 'the claimer')} can answer while it is claimed.</p>")
    if d is not None:
        parts.append("<h2>The student's code, as graded</h2>")
        for name, text in d.files.items():
            parts.append(f"<h3>{e(name)}</h3><pre class='code'>{e(text)}</pre>")
        parts += ["<h2>Feedback the student saw</h2>", f"<pre id='feedback'>{e(d.feedback)}</pre>",
                  "<h2>Tests (staff view)</h2>", _tests_table(d)]
    else:
        parts.append("<p>The submission was not kept (deleted).</p>")
    return page(f"Request #{esc.id}", "".join(parts))


def _tests_table(d: Delivery) -> str:
    rows = []
    for t in d.tests:
        if t.visible:
            shown = "\n".join(f"{k}: {v}" for k, v in (("input", t.input), ("expected", t.expected),
                                                        ("actual", t.actual), ("message", t.message)) if v)
        else:
            shown = t.definition or "(the test's source was not found)"
            if t.happened:
                shown += "\n\nwhat happened:\n" + "\n".join(f"{k}: {v}" for k, v in t.happened.items())
        rows.append(f"<tr class='{'visible' if t.visible else 'hidden'}'><td>{e(t.name)}</td>"
                    f"<td>{'visible' if t.visible else 'hidden'}</td><td>{e(t.status)}</td>"
                    f"<td>{e(t.exception_type or '')}</td><td><pre>{e(shown)}</pre></td></tr>")
    return ("<table id='tests'><tr><th>test</th><th>shown to student</th><th>status</th><th>exception</th>"
            "<th>what it checks</th></tr>" + "".join(rows) + "</table>")


def login(action: str, next_path: str, error: str = "") -> str:
    err = f"<p class='error' id='error'>{e(error)}</p>" if error else ""
    return page("Staff log in", f"<h1>Course staff: log in</h1>{err}<form method='post' action='{e(action)}'>"
                f"{_hidden({'next': next_path})}<p><label>user <input name='username' id='username'></label></p>"
                "<p><label>password <input type='password' name='password' id='password'></label></p>"
                "<p><button id='login'>log in</button></p></form>")
