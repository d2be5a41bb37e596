"""The dashboard for debugging a submission, behind the queue server's login.

    GET  /xqueue/dashboard/                  submissions: filters (assignment, state, result,
                                             student, dates) and pages
    GET  /xqueue/submission/<id>/            one submission: the feedback as the student sees
                                             it, the staff view of every test (hidden ones
                                             too, from the attempt ledger), the submission,
                                             pulls, puts, LMS delivery attempts, regrades,
                                             ledger history, a regrade button
    POST /xqueue/submission/<id>/regrade/    the regrade action: queued again as a copy (CSRF token,
                                             once per form)
    POST /xqueue/regrade_result/             `xgrader regrade --deliver` posts new results here

Everything shown is escaped; the grader's feedback HTML is shown as the
student sees it inside a sandboxed iframe (no scripts, its own origin), and
every page carries a Content-Security-Policy without scripts. The CSRF token
is an HMAC of the session under a per-process secret (a restarted server
asks for the form again); the regrade form carries a fresh regrade id, so a
double submit regrades once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
import uuid
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import structlog
from werkzeug.wrappers import Request, Response

from xgrader.queue_server import regrades
from xgrader.queue_server.browse import RESULTS, STATES, Browser, Detail, Filters

if TYPE_CHECKING:
    from xgrader.queue_server.app import QueueApp

log = structlog.get_logger(__name__)

PREFIX = "/xqueue/"
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#243447;color:#fff;padding:.6em 1.5em}header a{color:#cfe3ff;margin-right:1em}
main{padding:1em 1.5em;max-width:90em}h1{font-size:1.4em;margin:.2em 0 .6em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef1f5}tr.wrong td.score{color:#a00;font-weight:600}tr.right td.score{color:#070}
.facts th{width:11em}.mono,pre{font-family:ui-monospace,monospace;font-size:12.5px}
pre{background:#fff;border:1px solid #ddd;padding:.6em;overflow:auto;max-height:30em;white-space:pre-wrap}
form.filters{background:#fff;border:1px solid #ddd;padding:.6em;margin-bottom:1em}
form.filters label{margin-right:1em;white-space:nowrap}.pager a,.pager span{margin-right:1em}
iframe.feedback{width:100%;min-height:22em;border:1px solid #bbb;background:#fff;resize:vertical}
.hidden-test{background:#fff8e5}.status-passed{color:#070}.status-failed,.status-error,.status-timeout,.status-missing{color:#a00}
.note{color:#666}.flash{background:#e8f4e8;border:1px solid #9c9;padding:.5em;margin:.5em 0}
.flash.bad{background:#fbeaea;border-color:#d99}button{font-size:14px;padding:.3em 1em}
"""


def when(ts: float | None) -> str:
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_date(text: str, end: bool = False) -> float | None:
    """A YYYY-MM-DD (UTC) from the filter form; `end`: the day after (an inclusive end date)."""
    try:
        day = dt.datetime.strptime(text.strip(), "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    return (day + dt.timedelta(days=1) if end else day).timestamp()


def page(title: str, body: str, user: str = "") -> str:
    nav = (f"<header><a href='{PREFIX}dashboard/'>Submissions</a><a href='/'>Queues</a>"
           f"<span style='float:right'>{escape(user)}</span></header>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{nav}<main>{body}</main></body></html>")


def html_response(text: str, status: int = 200) -> Response:
    response = Response(text, status, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def envelope(code: int, content: Any, status: int = 200) -> Response:
    return Response(json.dumps({"return_code": code, "content": content}), status,
                    content_type="application/json")


class Pages:
    def __init__(self, app: "QueueApp") -> None:
        self.app = app
        self.browser = Browser(app.store)
        self._secret = secrets.token_bytes(32)
        self._ledger: Any = None
        self._ledger_error = ""

    # -- plumbing ---------------------------------------------------------------
    def handles(self, path: str) -> bool:
        return (path.startswith(PREFIX + "dashboard") or path.startswith(PREFIX + "submission/")
                or path == PREFIX + "regrade_result/")

    def dispatch(self, request: Request) -> Response:
        path = request.path
        if path == PREFIX + "regrade_result/":
            return self.regrade_result(request)
        user = self.app.user_of(request)
        if user is None:
            from xgrader.queue_server.dashboard import login_page

            target = path + (("?" + request.query_string.decode("latin-1")) if request.query_string else "")
            return html_response(login_page(target), 200)
        if path in (PREFIX + "dashboard", PREFIX + "dashboard/"):
            return self.list_page(request, user)
        parts = path[len(PREFIX + "submission/"):].strip("/").split("/")
        if not parts[0].isdigit() or len(parts[0]) > 18:
            return html_response(page("not found", "<h1>No such submission</h1>", user), 404)
        sid = int(parts[0])
        if len(parts) == 1:
            return self.detail_page(request, user, sid)
        if parts[1:] == ["regrade"]:
            if request.method != "POST":
                return html_response(page("method not allowed", "<h1>Use the regrade button</h1>", user), 405)
            return self.regrade_action(request, user, sid)
        return html_response(page("not found", "<h1>Not found</h1>", user), 404)

    def csrf_token(self, request: Request) -> str:
        session = request.cookies.get("sessionid", "")
        return hmac.new(self._secret, session.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, request: Request) -> bool:
        sent = request.form.get("csrf", "")
        if not sent or not hmac.compare_digest(sent, self.csrf_token(request)):
            return False
        origin = request.headers.get("Origin")
        if origin and origin != "null" and origin.rstrip("/") != request.host_url.rstrip("/"):
            return False
        return True

    def ledger(self) -> Any:
        url = self.app.config.ledger
        if not url:
            self._ledger_error = "no attempt ledger configured (xgrader queue serve --ledger URL)"
            return None
        if self._ledger is None:
            try:
                from xgrader.ledger import Ledger

                ledger = Ledger(url, connect_timeout_s=3.0)
                ledger.migrate()
                self._ledger = ledger
            except Exception as exc:   # the dashboard still shows the queue's own data
                self._ledger_error = f"the attempt ledger is unavailable: {str(exc)[:200]}"
                log.warning("dashboard_ledger_unavailable", error=str(exc)[:200])
                return None
        return self._ledger

    # -- list ---------------------------------------------------------------------
    def list_page(self, request: Request, user: str) -> Response:
        args = request.args
        filters = Filters(
            assignment=args.get("assignment", "")[:200], student=args.get("student", "").strip()[:200],
            state=args.get("state", "") if args.get("state", "") in STATES else "",
            result=args.get("result", "") if args.get("result", "") in RESULTS else "",
            since=parse_date(args.get("since", "")), until=parse_date(args.get("until", ""), end=True),
            page=max(1, int(args.get("page", "1"))) if args.get("page", "1").isdigit() and len(args.get("page", "")) < 7
            else 1)
        size = self.app.config.dashboard_page_size
        started = time.perf_counter()
        rows, total = self.browser.list(filters, size)
        assignments, _queues = self.browser.facets()
        pages = max(1, -(-total // size))
        kept = {k: args.get(k, "") for k in ("assignment", "student", "state", "result", "since", "until")
                if args.get(k)}

        def select(name: str, options: list[str], current: str, blank: str) -> str:
            opts = [f"<option value=''>{escape(blank)}</option>"] + [
                f"<option value='{escape(o)}'{' selected' if o == current else ''}>{escape(o)}</option>"
                for o in options]
            return f"<select name='{name}' id='f-{name}'>{''.join(opts)}</select>"

        form = (
            "<form class='filters' method='get' action=''>"
            f"<label>assignment {select('assignment', assignments, filters.assignment, 'any')}</label>"
            f"<label>state {select('state', list(STATES), filters.state, 'any')}</label>"
            f"<label>result {select('result', list(RESULTS), filters.result, 'any')}</label>"
            f"<label>student <input name='student' id='f-student' size='14' value='{escape(filters.student)}'></label>"
            f"<label>from <input type='date' name='since' value='{escape(args.get('since', ''))}'></label>"
            f"<label>to <input type='date' name='until' value='{escape(args.get('until', ''))}'></label>"
            "<button type='submit'>filter</button> "
            f"<a href='{PREFIX}dashboard/'>clear</a></form>")
        head = ("<tr><th>#</th><th>queue</th><th>assignment</th><th>student</th><th>state</th><th>score</th>"
                "<th>correct</th><th>pulls</th><th>puts</th><th>delivery</th><th>submitted</th></tr>")
        body = []
        for r in rows:
            css = "" if r.correct is None else (" class='right'" if r.correct else " class='wrong'")
            body.append(
                f"<tr{css} data-id='{r.id}'><td><a href='{PREFIX}submission/{r.id}/'>{r.id}</a></td>"
                f"<td>{escape(r.queue)}</td><td>{escape(r.assignment)}</td><td>{escape(r.student)}</td>"
                f"<td>{escape(r.state)}</td><td class='score'>{escape(r.score)}</td>"
                f"<td>{'' if r.correct is None else ('yes' if r.correct else 'no')}</td>"
                f"<td>{r.pulls}</td><td>{r.puts}</td><td>{escape(r.delivery)}</td><td>{when(r.created)}</td></tr>")
        pager = [f"<span id='page-info'>page {min(filters.page, pages)} of {pages} ({total} submissions)</span>"]
        if filters.page > 1:
            pager.append(f"<a rel='prev' href='?{escape(urlencode({**kept, 'page': filters.page - 1}))}'>previous</a>")
        if filters.page < pages:
            pager.append(f"<a rel='next' href='?{escape(urlencode({**kept, 'page': filters.page + 1}))}'>next</a>")
        took = (time.perf_counter() - started) * 1000
        html = (f"<h1>Submissions</h1>{form}<p class='pager'>{''.join(pager)}</p>"
                f"<table id='submissions'>{head}{''.join(body)}</table>"
                f"<p class='pager'>{''.join(pager)}</p><p class='note'>query {took:.0f} ms</p>")
        if not rows:
            html += "<p class='note'>No submission matches these filters.</p>"
        return html_response(page("Submissions - xgrader queue", html, user))

    # -- detail ---------------------------------------------------------------------
    def detail_page(self, request: Request, user: str, sid: int) -> Response:
        d = self.browser.detail(sid)
        if d is None:
            return html_response(page("not found", f"<h1>No submission {sid}</h1>", user), 404)
        flash = ""
        done = request.args.get("regrade", "")
        if done:
            good = done == regrades.RegradeStatus.OK
            new = request.args.get("new", "")
            if good and new.isdigit():
                flash = (f"<p class='flash' id='flash'>Regrade queued as <a id='regrade-link' href='{PREFIX}submission/"
                         f"{escape(new)}/'>submission #{escape(new)}</a>: a grader grades it with the current tests "
                         "and its result goes to the same LMS callback.</p>")
            else:
                text = regrades.MESSAGES.get(done, "regrade refused")
                flash = f"<p class='flash{'' if good else ' bad'}' id='flash'>{escape(text)}</p>"
        origin = regrades.regrade_of(self.app.store, d.id)
        if origin is not None:
            flash += (f"<p class='note' id='regrade-of'>A regrade of <a href='{PREFIX}submission/{origin[0]}/'>"
                      f"submission #{origin[0]}</a>, queued {when(origin[1])}.</p>")
        parts = [f"<h1>Submission #{d.id}: {escape(d.assignment or '(no assignment)')}"
                 f" by {escape(d.student or '(unknown student)')}</h1>", flash, self._facts(d),
                 self._feedback(d)]
        ledger = self.ledger()
        latest = None
        attempts: list = []
        if ledger is not None:
            try:
                attempts = ledger.history(queue=d.queue, submission_id=str(d.id))
                latest = ledger.get(attempts[-1].id) if attempts else None
            except Exception as exc:
                self._ledger_error = f"the attempt ledger is unavailable: {str(exc)[:200]}"
                ledger = None
        parts.append(self._staff_view(latest, ledger))
        parts.append(self._submission(d))
        parts.append(self._delivery(d))
        parts.append(self._history(d, attempts, ledger))
        parts.append(self._regrade_form(request, d))
        return html_response(page(f"Submission {d.id} - xgrader queue", "".join(parts), user))

    def _facts(self, d: Detail) -> str:
        lease = f"until {when(d.leased_until)}" if d.state == "leased" else ""
        facts = [("queue", d.queue), ("state", d.state + (f" ({lease})" if lease else "")),
                 ("assignment", d.assignment), ("student", d.student), ("LMS key", d.lms_key),
                 ("submitted", when(d.created)), ("answered", when(d.answered)),
                 ("pulls", str(d.pulls)), ("puts", str(d.puts))]
        rows = "".join(f"<tr><th>{escape(k)}</th><td id='fact-{escape(k.replace(' ', '-'))}'>{escape(v)}</td></tr>"
                       for k, v in facts)
        return f"<table class='facts'>{rows}</table>"

    def _feedback(self, d: Detail) -> str:
        if d.result is None:
            return "<h2>Feedback</h2><p class='note'>No result yet.</p>"
        msg = str(d.result.get("msg", ""))
        score = d.result.get("score")
        verdict = "correct" if d.result.get("correct") else "incorrect"
        return ("<h2>Feedback as the student sees it</h2>"
                f"<p id='verdict'>score <strong>{escape(str(score))}</strong>, {verdict}</p>"
                f"<iframe class='feedback' id='feedback' sandbox='' title='feedback' srcdoc='{escape(msg, quote=True)}'>"
                "</iframe><details><summary>the grader's reply as posted (JSON)</summary>"
                f"<pre id='raw-reply'>{escape(d.result_raw or '')}</pre></details>")

    def _staff_view(self, attempt: Any, ledger: Any) -> str:
        head = "<h2>Staff view: every test, hidden ones included</h2>"
        if ledger is None:
            return head + f"<p class='note'>{escape(self._ledger_error)}</p>"
        if attempt is None:
            return head + "<p class='note'>This submission is not in the attempt ledger (not graded yet).</p>"
        report = attempt.report or {}
        lines = [f"<p>attempt #{attempt.id}, {escape(attempt.source)}, graded {when(attempt.graded_at)} with "
                 f"{escape(attempt.assignment)} version <span class='mono'>{escape(attempt.assignment_version)}</span>: "
                 f"<strong>{attempt.score:g}/{attempt.max_score:g}</strong> ({escape(attempt.outcome)})</p>"]
        if attempt.signatures:
            lines.append("<p>feedback signatures fired: " + "; ".join(escape(s) for s in attempt.signatures) + "</p>")
        rows = []
        for t in attempt.tests:
            detail = t.detail
            cells = [escape(t.name), "visible" if t.visible else "hidden", f"<span class='status-{escape(t.status)}'>"
                     f"{escape(t.status)}</span>", f"{t.points:g}/{t.weight:g}"]
            for key in ("input", "expected", "actual", "message", "exception_type", "output"):
                value = detail.get(key)
                cells.append(f"<pre>{escape(str(value))}</pre>" if value not in (None, "") else "")
            css = " class='hidden-test'" if not t.visible else ""
            rows.append(f"<tr{css}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        lines.append("<table id='staff-tests'><tr><th>test</th><th>shown to student</th><th>status</th><th>points</th>"
                     "<th>input</th><th>expected</th><th>actual</th><th>message</th><th>exception</th><th>output</th></tr>"
                     + "".join(rows) + "</table>")
        explanations = report.get("explanations") or []
        if explanations:
            lines.append("<h3>Explanations</h3><ul>" + "".join(
                f"<li><strong>{escape(str(e.get('title', '')))}</strong> {escape(str(e.get('detail', '')))}"
                + (f"<pre>{escape(str(e.get('traceback')))}</pre>" if e.get("traceback") else "") + "</li>"
                for e in explanations if isinstance(e, dict)) + "</ul>")
        if report.get("hint"):
            lines.append(f"<h3>Hint given</h3><pre>{escape(str(report['hint']))}</pre>")
        if attempt.timings:
            lines.append("<p class='note'>timings: " + ", ".join(
                f"{escape(k)} {v * 1000:.0f} ms" for k, v in sorted(attempt.timings.items())) + "</p>")
        return head + "".join(lines)

    def _submission(self, d: Detail) -> str:
        out = ["<h2>The submission</h2>"]
        if d.student_response:
            out.append(f"<pre id='student-response'>{escape(d.student_response)}</pre>")
        if d.files:
            sizes = self.browser.file_sizes(list(d.files.values()))
            out.append("<ul>" + "".join(
                f"<li><a href='{PREFIX}files/{escape(token)}'>{escape(name)}</a> ({sizes.get(token, 0)} bytes)</li>"
                for name, token in d.files.items()) + "</ul>")
        if not d.student_response and not d.files:
            out.append("<p class='note'>(empty)</p>")
        return "".join(out)

    def _delivery(self, d: Detail) -> str:
        out = [f"<h2>LMS delivery</h2><p id='delivery'>{escape(d.delivery)}"
               + (f" after {d.delivery_tries} attempts" if d.delivery_tries else "")
               + (f": {escape(d.delivery_error)}" if d.delivery_error else "") + "</p>"]
        if d.attempts:
            out.append("<table id='delivery-attempts'><tr><th>at</th><th>ok</th><th>error</th></tr>" + "".join(
                f"<tr><td>{when(at)}</td><td>{'yes' if ok else 'no'}</td><td>{escape(err)}</td></tr>"
                for at, ok, err in d.attempts) + "</table>")
        done = regrades.history(self.app.store, d.id)
        if done:
            def score(value: float | None) -> str:
                return "" if value is None else f"{value:g}"

            def how(r: dict) -> str:
                if r["new_submission_id"]:
                    return (f"graded again as <a href='{PREFIX}submission/{r['new_submission_id']}/'>"
                            f"#{r['new_submission_id']}</a>")
                return "new result posted (xgrader regrade --deliver)"

            rows = "".join(f"<tr><td>{when(r['created'])}</td><td>{how(r)}</td><td>{escape(r['user'])}</td>"
                           f"<td>{score(r['old_score'])}</td><td>{score(r['new_score'])}</td></tr>" for r in done)
            out.append("<h3>Regrades</h3><table id='regrades'><tr><th>at</th><th>how</th><th>by</th><th>old score</th>"
                       f"<th>new score</th></tr>{rows}</table>")
        return "".join(out)

    def _history(self, d: Detail, attempts: list, ledger: Any) -> str:
        out = ["<h2>Ledger history of this submission</h2>"]
        if ledger is None:
            return out[0] + f"<p class='note'>{escape(self._ledger_error)}</p>"
        if not attempts:
            out.append("<p class='note'>No recorded attempt.</p>")
        else:
            out.append("<table id='ledger-history'><tr><th>attempt</th><th>graded</th><th>how</th><th>score</th>"
                       "<th>outcome</th><th>version</th><th>xgrader</th></tr>" + "".join(
                           f"<tr><td>{a.id}</td><td>{when(a.graded_at)}</td>"
                           f"<td>{escape(a.source)}{f' of #{a.regrade_of}' if a.regrade_of else ''}</td>"
                           f"<td>{a.score:g}/{a.max_score:g}</td><td>{escape(a.outcome)}</td>"
                           f"<td class='mono'>{escape(a.assignment_version[:12])}</td>"
                           f"<td>{escape(a.xgrader_version)}</td></tr>" for a in attempts) + "</table>")
        if d.student and d.assignment:
            try:
                others = ledger.history(student=d.student, assignment=d.assignment, limit=200)
            except Exception:
                others = []
            if others:
                out.append(f"<h3>All attempts of {escape(d.student)} at {escape(d.assignment)}</h3>"
                           "<table id='student-attempts'><tr><th>graded</th><th>submission</th><th>score</th>"
                           "<th>outcome</th></tr>" + "".join(
                               f"<tr><td>{when(a.graded_at)}</td><td>"
                               + (f"<a href='{PREFIX}submission/{escape(a.submission_id)}/'>#{escape(a.submission_id)}</a>"
                                  if a.queue == d.queue and a.submission_id.isdigit() else escape(a.submission_id))
                               + f"</td><td>{a.score:g}/{a.max_score:g}</td><td>{escape(a.outcome)}</td></tr>"
                               for a in others) + "</table>")
        return "".join(out)

    def _regrade_form(self, request: Request, d: Detail) -> str:
        if d.state != "answered":
            return ("<h2>Regrade</h2><p class='note'>Only an answered submission can be regraded "
                    f"(this one is {escape(d.state)}).</p>")
        return ("<h2>Regrade</h2><p>Queue this submission again (as a new submission with the same code and "
                "LMS callback): the next grader grades it with the current tests, and the new result is "
                "delivered to the LMS once.</p>"
                f"<form method='post' action='{PREFIX}submission/{d.id}/regrade/' id='regrade-form'>"
                f"<input type='hidden' name='csrf' value='{escape(self.csrf_token(request))}'>"
                f"<input type='hidden' name='regrade_id' value='dash-{uuid.uuid4().hex}'>"
                "<button type='submit' id='regrade-button'>Regrade this submission</button></form>")

    # -- actions ----------------------------------------------------------------------
    def regrade_action(self, request: Request, user: str, sid: int) -> Response:
        if not self.csrf_ok(request):
            log.warning("dashboard_csrf_refused", submission_id=sid, user=user[:64])
            return html_response(page("forbidden", "<h1>Refused</h1><p>The form expired or did not come from "
                                      "this dashboard: reload the page and try again.</p>", user), 403)
        regrade_id = request.form.get("regrade_id", "")[:80]
        if not regrade_id:
            return html_response(page("bad request", "<h1>No regrade id</h1>", user), 400)
        status, new_id = regrades.requeue(self.app.store, sid, regrade_id, user=user)
        log.info("dashboard_regrade", submission_id=sid, new_submission_id=new_id, user=user[:64], status=status)
        response = Response("", 303)
        response.headers["Location"] = (f"{PREFIX}submission/{sid}/?regrade={status}"
                                        + (f"&new={new_id}" if new_id else ""))
        return response

    def regrade_result(self, request: Request) -> Response:
        """`xgrader regrade --deliver`: a new reply for an answered submission,
        delivered to the LMS once per (regrade id, submission)."""
        if request.method != "POST":
            return envelope(1, "'regrade_result' must use HTTP POST", 405)
        user = self.app.user_of(request)
        if user is None:
            return envelope(1, "login_required", 401)
        cookie, header = request.cookies.get("csrftoken", ""), request.headers.get("X-CSRFToken", "")
        if not cookie or not hmac.compare_digest(cookie, header):
            return envelope(1, "CSRF verification failed", 403)
        form = request.form
        sid_text, regrade_id, body = form.get("submission_id", ""), form.get("regrade_id", ""), form.get("xqueue_body")
        try:
            reply = json.loads(body or "")
        except ValueError:
            reply = None
        if (not sid_text.isdigit() or len(sid_text) > 18 or not regrade_id or len(regrade_id) > 80
                or not isinstance(reply, dict) or not {"correct", "score", "msg"} <= set(reply)):
            return envelope(1, "Incorrect reply format", 400)
        status, delivery = regrades.deliver_result(self.app.store, int(sid_text), regrade_id, body, user=user)
        if delivery is not None:
            self.app.on_result(delivery)
        log.info("regrade_result", submission_id=int(sid_text), regrade_id=regrade_id[:80], status=status)
        code = 0 if status in (regrades.RegradeStatus.OK, regrades.RegradeStatus.DUPLICATE) else 1
        http = {regrades.RegradeStatus.NO_SUCH: 404, regrades.RegradeStatus.BUSY: 409,
                regrades.RegradeStatus.NOT_ANSWERED: 409}.get(status, 200)
        return envelope(code, {"status": status, "message": regrades.MESSAGES[status]}, http)
