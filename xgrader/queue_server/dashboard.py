"""Read-only HTML for local debugging. Every value is escaped: submissions
and grader replies are untrusted text."""

from __future__ import annotations

import json
from html import escape

STYLE = ("body{font:14px sans-serif;margin:1.5em}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
         "th{background:#eee}.msg{max-width:40em;overflow-wrap:anywhere;font-family:monospace;font-size:12px}")


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")


def login_page(next_path: str) -> str:
    return _page("xgrader queue: log in", (
        "<h1>xgrader queue</h1><form method='post' action='/xqueue/login/'>"
        f"<input type='hidden' name='next' value='{escape(next_path)}'>"
        "<label>user <input name='username'></label> "
        "<label>password <input type='password' name='password'></label> "
        "<button>log in</button></form>"))


def _result_cells(result: str | None) -> tuple[str, str, str]:
    if result is None:
        return "", "", ""
    try:
        data = json.loads(result)
        return str(data.get("correct")), str(data.get("score")), str(data.get("msg", ""))[:400]
    except (ValueError, AttributeError):
        return "?", "?", result[:400]


def render_dashboard(queues: list[str], counts: list[tuple], rows: list[tuple], now: float) -> str:
    by_queue = {c[0]: c for c in counts}
    parts = ["<h1>xgrader queue</h1><h2>Queues</h2><table><tr><th>queue</th><th>waiting</th>"
             "<th>leased</th><th>answered</th><th>retired</th><th>delivered</th><th>delivery failed</th></tr>"]
    for q in queues:
        c = by_queue.get(q, (q, 0, 0, 0, 0, 0, 0))
        parts.append("<tr>" + "".join(f"<td>{escape(str(v or 0) if i else str(v))}</td>"
                                      for i, v in enumerate(c)) + "</tr>")
    parts.append("</table><h2>Latest submissions</h2><table><tr><th>id</th><th>queue</th><th>lms_key</th>"
                 "<th>state</th><th>pulls</th><th>puts</th><th>correct</th><th>score</th>"
                 "<th>delivery</th><th>msg</th></tr>")
    for (sid, queue, lms_key, state, leased_until, pulls, puts, result, delivery,
         tries, error, _created) in rows:
        if state == "pending" and leased_until > now:
            state = f"leased ({leased_until - now:.0f} s left)"
        correct, score, msg = _result_cells(result)
        deliv = delivery + (f" after {tries} tries" if tries else "") + (f": {error}" if error else "")
        cells = [str(sid), queue, lms_key, state, str(pulls), str(puts), correct, score, deliv]
        parts.append("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in cells)
                     + f"<td class='msg'>{escape(msg)}</td></tr>")
    parts.append("</table>")
    return _page("xgrader queue", "".join(parts))
