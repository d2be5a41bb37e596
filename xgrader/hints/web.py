"""The hint pages as one werkzeug request handler, mounted by the bundled
queue server's web app and by `xgrader serve-hints` under the path of
`hints.page_url` (default `/hints/`):

    GET  h/<link>          the student page of one hint (rate, ask the staff, read the answer)
    POST h/<link>          rate | escalate, then 303 back to the page
    GET  staff/            the staff queue, oldest first (?state=open|answered|closed|all)
    GET  staff/<id>        one request: code as graded, feedback, hint, note, hidden tests
    POST staff/<id>        claim | release | answer | close, then 303 back

Every refusal is a 4xx page saying why, and changes nothing: a changed or
forged link 403, an expired one 410, a form of another hint or browser 403,
a replayed or doubled form 409, a note over the limit 400, a body over
MAX_BODY 413, a second rating or question 409, past the escalation quota 429.
Student forms carry a one-time signed token bound to a cookie; staff forms a
token bound to the staff session. No JavaScript anywhere.
"""

from __future__ import annotations

import hmac
import re
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

import structlog
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

from xgrader.hints import pages
from xgrader.hints.links import FORM_TTL_S, HintLinks, LinkError
from xgrader.hints.records import ACTIONS, OPEN_STATES, EscalationState, Refused
from xgrader.hints.store import HintStore, open_store

if TYPE_CHECKING:
    from xgrader.config import HintSettings

log = structlog.get_logger(__name__)

COOKIE = "xgrader_hint"
MAX_BODY = 256 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",        # the link is a capability: never sent on
    "Cache-Control": "no-store",
}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FILTER_STATES = {"open": list(OPEN_STATES), "answered": [EscalationState.answered],
                  "closed": [EscalationState.closed], "all": None}


class StaffAuth(Protocol):
    """Who the staff are: the queue server's logins, or serve-hints' own."""

    def user(self, request: Request) -> str | None: ...

    def session_key(self, request: Request) -> str:
        """A secret value of the session (staff CSRF tokens derive from it)."""

    def login_page(self, request: Request) -> Response:
        """What a visitor who is not logged in gets instead of a staff page."""

    def route(self, request: Request, rest: str) -> Response | None:
        """Extra routes under staff/ (login, logout), or None."""


def html(body: str, status: int = 200) -> Response:
    response = Response(body, status, content_type="text/html; charset=utf-8")
    response.headers.update(SECURITY_HEADERS)
    return response


def see_other(location: str) -> Response:
    response = Response("", 303)
    response.headers["Location"] = location
    response.headers.update(SECURITY_HEADERS)
    return response


class HintPages:
    def __init__(self, cfg: HintSettings, auth: StaffAuth | None = None, dashboard_url: str | None = None,
                 store: HintStore | None = None, logout_url: str | None = None) -> None:
        if not cfg.page_url or cfg.link_secret is None:
            raise ValueError("the hint pages need hints.page_url and hints.link_secret")
        self.cfg = cfg
        self.links = HintLinks(cfg.link_secret.get_secret_value(), cfg.page_url, cfg.link_ttl_s)
        self.prefix = self.links.prefix
        self.staff_base = self.prefix + "staff/"
        self.auth = auth
        self.dashboard_url = dashboard_url
        self.logout_url = logout_url
        self._store = store

    @property
    def store(self) -> HintStore:
        if self._store is None:
            self._store = open_store(self.cfg.store)
        return self._store

    def handles(self, path: str) -> bool:
        return path.startswith(self.prefix)

    # -- WSGI ------------------------------------------------------------------------
    def wsgi(self, environ: dict, start_response: Callable) -> Any:
        """A WSGI app of these pages alone (serve-hints)."""
        request = Request(environ)
        return self.respond(request)(environ, start_response)

    def respond(self, request: Request) -> Response:
        request.max_content_length = MAX_BODY
        request.max_form_memory_size = MAX_BODY
        try:
            return self._dispatch(request)
        except RequestEntityTooLarge:
            return html(pages.refusal(413, f"The request is larger than {MAX_BODY // 1024} KiB."), 413)
        except Exception:
            log.exception("hint_page_failed", path=request.path[:200], method=request.method)
            return html(pages.refusal(500, "Something went wrong on our side; nothing was changed. "
                                           "Try again later."), 500)

    def _dispatch(self, request: Request) -> Response:
        rest = request.path[len(self.prefix):] if self.handles(request.path) else None
        if rest is None:
            return html(pages.refusal(404, "Not found."), 404)
        if rest.startswith("h/"):
            return self._student(request, rest[2:])
        if rest == "staff" or rest.startswith("staff/"):
            return self._staff(request, rest[6:])
        return html(pages.refusal(404, "Not found."), 404)

    # -- the student page ---------------------------------------------------------------
    def _student(self, request: Request, token: str) -> Response:
        try:
            audit_id = self.links.verify(token)
        except LinkError as exc:
            log.info("hint_link_refused", status=exc.status, reason=str(exc))
            return html(pages.refusal(exc.status, str(exc)), exc.status)
        delivery = self.store.delivery_get(audit_id)
        if delivery is None:
            return html(pages.refusal(404, "This hint is no longer available (its records were deleted)."), 404)
        if request.method == "POST":
            return self._student_post(request, audit_id)
        if request.method not in ("GET", "HEAD"):
            return html(pages.refusal(405, "Use the buttons on the page."), 405)
        cookie = request.cookies.get(COOKIE) or ""
        fresh = not cookie or len(cookie) > 100
        if fresh:
            cookie = self.links.new_cookie()
        used = self.store.escalations_count(delivery.student, delivery.assignment)
        left = max(0, self.cfg.escalations_per_assignment - used)
        body = pages.student(delivery, self.store.rating_get(audit_id), self.store.escalation_for(audit_id),
                             request.path, {"csrf": self.links.form_token(audit_id, cookie), "hint": str(audit_id)},
                             self.cfg.note_max_chars, left, used)
        response = html(body)
        if fresh:
            response.set_cookie(COOKIE, cookie, max_age=int(self.cfg.link_ttl_s), path=self.prefix,
                                secure=request.scheme == "https", httponly=True, samesite="Lax")
        return response

    def _student_post(self, request: Request, audit_id: int) -> Response:
        back = request.path

        def refuse(status: int, message: str) -> Response:
            log.info("hint_form_refused", audit_id=audit_id, status=status, reason=message[:120])
            return html(pages.refusal(status, message, back), status)

        form = request.form
        if form.get("hint", "") != str(audit_id):
            return refuse(403, "This form is for another hint: a rating or a question can only be sent "
                               "for the hint of this link. Nothing was changed.")
        action = form.get("action", "")
        note = ""
        if action == "rate":
            if form.get("rating") not in ("helpful", "unhelpful"):
                return refuse(400, "A rating is helpful or unhelpful.")
        elif action == "escalate":
            note = _CONTROL.sub("", form.get("note", "").replace("\r\n", "\n")).strip()
            if len(note) > self.cfg.note_max_chars:
                return refuse(400, f"Your note has {len(note)} characters; at most {self.cfg.note_max_chars} "
                                   "are allowed. Shorten it and send it again. Nothing was sent.")
        else:
            return refuse(400, "Unknown action: use the buttons on the page.")
        try:
            nonce = self.links.verify_form(form.get("csrf", ""), audit_id, request.cookies.get(COOKIE) or "")
        except LinkError as exc:
            return refuse(exc.status, f"{exc} Nothing was changed.")
        if not self.store.use_form(nonce, time.time() + FORM_TTL_S):
            return refuse(409, "This form was already sent (sent twice, or replayed). Nothing was changed.")
        try:
            if action == "rate":
                self.store.rate(audit_id, form["rating"] == "helpful")
            else:
                esc = self.store.escalate(audit_id, note, self.cfg.escalations_per_assignment)
                log.info("hint_escalated", audit_id=audit_id, escalation=esc.id, assignment=esc.assignment)
        except Refused as exc:
            return refuse(exc.status, f"{str(exc)[0].upper()}{str(exc)[1:]}. Nothing was changed.")
        return see_other(back)

    # -- staff ----------------------------------------------------------------------------
    def _staff(self, request: Request, rest: str) -> Response:
        if self.auth is None:
            return html(pages.refusal(404, "The staff pages are not served here: use "
                                           "`xgrader hints escalations`."), 404)
        routed = self.auth.route(request, rest)
        if routed is not None:
            return routed
        user = self.auth.user(request)
        if user is None:
            if request.method == "POST":
                return html(pages.refusal(403, "Log in first. Nothing was changed."), 403)
            return self.auth.login_page(request)
        now = time.time()
        if rest == "":
            state = request.args.get("state", "open")
            if state not in _FILTER_STATES:
                state = "open"
            items = self.store.escalations(_FILTER_STATES[state], limit=500)
            return html(pages.staff_list(self.staff_base, user, items, state, self.dashboard_url,
                                         self.logout_url, now))
        if not rest.isdigit() or len(rest) > 15:
            return html(pages.refusal(404, "No such request."), 404)
        esc_id = int(rest)
        if request.method == "POST":
            expected = self.links.staff_csrf(self.auth.session_key(request))
            if not hmac.compare_digest(request.form.get("csrf", ""), expected):
                return html(pages.refusal(403, "The form check failed (CSRF): reload the page and try again. "
                                               "Nothing was changed.", request.path), 403)
            action = request.form.get("action", "")
            if action not in ACTIONS:
                return html(pages.refusal(400, "Unknown action.", request.path), 400)
            try:
                esc = self.store.escalation_act(esc_id, action, user, request.form.get("text", ""))
            except Refused as exc:
                return html(pages.refusal(exc.status, f"{exc}. Nothing was changed.", request.path), exc.status)
            log.info("hint_escalation_" + action, escalation=esc_id, staff=user)
            return see_other(request.path)
        esc = self.store.escalation_get(esc_id)
        if esc is None:
            return html(pages.refusal(404, "No such request (or it was deleted)."), 404)
        return html(pages.staff_detail(self.staff_base, user, esc, self.store.delivery_get(esc.audit_id),
                                       self.store.rating_get(esc.audit_id), request.path,
                                       self.links.staff_csrf(self.auth.session_key(request)),
                                       self.dashboard_url, self.logout_url, now))
