"""Staff logins of `xgrader serve-hints` (deployments on a real xqueue have
no bundled dashboard): users and passwords from the operator, a signed
session cookie (stateless, so any number of serve-hints replicas accept
it), valid for a fixed time. The queue server uses its own logins instead
(queue_server/hint_routes.py)."""

from __future__ import annotations

import hmac
import re

import structlog
from werkzeug.wrappers import Request, Response

from xgrader.hints import pages
from xgrader.hints.links import HintLinks
from xgrader.hints.web import html, see_other

log = structlog.get_logger(__name__)

COOKIE = "xgrader_staff"
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]|//|/\.\.?(/|$)")


class FormLogin:
    def __init__(self, links: HintLinks, users: dict[str, str], ttl_s: float = 12 * 3600.0) -> None:
        self.links = links
        self.users = {name: pw.encode() for name, pw in users.items()}
        self.ttl_s = ttl_s
        self.base = links.prefix + "staff/"

    def user(self, request: Request) -> str | None:
        cookie = request.cookies.get(COOKIE)
        if not cookie or len(cookie) > 400:
            return None
        name = self.links.staff_user(cookie, self.ttl_s)
        return name if name in self.users else None

    def session_key(self, request: Request) -> str:
        return request.cookies.get(COOKIE, "")

    def login_page(self, request: Request, error: str = "", status: int = 200) -> Response:
        return html(pages.login(self.base + "login", request.path if request.method == "GET" else self.base,
                                error), status)

    def _next(self, target: str) -> str:
        """Only a path of the staff pages: never another site (open redirect)."""
        if target.startswith(self.base) and not _UNSAFE.search(target[1:]) and len(target) < 200:
            return target
        return self.base

    def route(self, request: Request, rest: str) -> Response | None:
        if rest == "login":
            if request.method != "POST":
                return self.login_page(request)
            name, password = request.form.get("username", ""), request.form.get("password", "")
            expected = self.users.get(name)
            # compare even for unknown names, so timing does not reveal them
            ok = hmac.compare_digest(expected or b"\0" * 32, password.encode()) and expected is not None
            if not ok:
                log.warning("hint_staff_login_failed", user=name[:64])
                return html(pages.login(self.base + "login", self._next(request.form.get("next", "")),
                                        "Wrong user or password."), 403)
            response = see_other(self._next(request.form.get("next", "")))
            response.set_cookie(COOKIE, self.links.staff_session(name), max_age=int(self.ttl_s), path=self.base,
                                secure=request.scheme == "https", httponly=True, samesite="Lax")
            log.info("hint_staff_login", user=name)
            return response
        if rest == "logout" and request.method == "POST":
            response = see_other(self.base)
            response.delete_cookie(COOKIE, path=self.base)
            return response
        return None
