"""The hint pages (xgrader/hints/web.py) mounted in the bundled queue
server's web app: students open their hint links here, and staff use the
queue server's own logins and sessions (the dashboard's) for the escalation
queue."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from werkzeug.wrappers import Request, Response

from xgrader.hints.web import HintPages, html
from xgrader.queue_server.app import PREFIX, SESSION_COOKIE
from xgrader.queue_server.dashboard import login_page

if TYPE_CHECKING:
    from xgrader.config import HintSettings
    from xgrader.queue_server.app import QueueApp


class QueueStaffAuth:
    """Staff are the queue server's users, logged in through its login form."""

    def __init__(self, app: QueueApp) -> None:
        self.app = app

    def user(self, request: Request) -> str | None:
        return self.app.user_of(request)

    def session_key(self, request: Request) -> str:
        return request.cookies.get(SESSION_COOKIE, "")

    def login_page(self, request: Request) -> Response:
        return html(login_page(request.path))

    def route(self, request: Request, rest: str) -> Response | None:
        return None


def check_hint_settings(cfg: HintSettings) -> None:
    """ValueError if the pages cannot be served next to the queue's own."""
    path = urlsplit(cfg.page_url or "").path.rstrip("/") + "/"
    if path == "/" or path.startswith(PREFIX):
        raise ValueError(f"hints.page_url's path {path!r} would hide the queue's own pages: use e.g. /hints/")


def attach_hint_pages(app: QueueApp, cfg: HintSettings) -> HintPages:
    """Serve the hint pages of `cfg` (page_url's path, e.g. /hints/) from `app`."""
    check_hint_settings(cfg)
    app.hint_pages = HintPages(cfg, QueueStaffAuth(app), dashboard_url="/")
    return app.hint_pages
