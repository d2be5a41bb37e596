"""The bundled queue server as a WSGI app: the grader side and the LMS side
of xqueue with legacy xqueue's exact envelopes and messages
(shared/xqueue-protocol.md), plus uploaded files and a read-only dashboard.

Per-request work is kept small: one or two SQLite statements, sessions
cached in memory after the first look-up. The xqueue endpoints read their
urlencoded forms and cookies and write their JSON replies without
werkzeug's general machinery (a third of the server's CPU per request);
multipart uploads, the dashboard and files still go through werkzeug.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import threading
import time
from typing import Any, Callable, Union
from urllib.parse import parse_qsl, quote

import structlog
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES, dump_cookie
from werkzeug.utils import cached_property
from werkzeug.wrappers import Request, Response

from xgrader.queue_server.config import QueueServerConfig
from xgrader.queue_server.dashboard import login_page, render_dashboard
from xgrader.queue_server.store import Delivery, PutStatus, Store

log = structlog.get_logger(__name__)

PREFIX = "/xqueue/"
ENDPOINTS = {"login", "logout", "status", "submit", "get_queuelen", "get_submission", "put_result"}
PROTECTED = {"submit", "get_queuelen", "get_submission", "put_result"}
SESSION_COOKIE = "sessionid"
CSRF_COOKIE = "csrftoken"

# edx-submissions answers with real status codes; legacy always with 200.
EDX_STATUS = {
    "login_required": 401,
    "Incorrect login credentials": 403,
    "Insufficient login info": 400,
    "Queue requests should use HTTP POST": 405,
    "Queue request has invalid format": 400,
    "'put_result' must use HTTP POST": 405,
    "Incorrect reply format": 400,
    "Submission does not exist": 404,
    "Incorrect key for submission": 403,
}


URLENCODED = "application/x-www-form-urlencoded"
_STATUS_LINES = {code: f"{code} {reason.upper()}" for code, reason in HTTP_STATUS_CODES.items()}


class QueueRequest(Request):
    """werkzeug's Request with cheaper urlencoded forms and cookies (the
    same values: werkzeug's own parse_qsl call and limits, the first of
    repeated cookies); anything else (multipart, quoted cookies) is
    werkzeug's."""

    def _load_form_data(self) -> None:
        if "form" in self.__dict__:
            return
        environ = self.environ
        if environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != URLENCODED:
            return super()._load_form_data()
        length = self.content_length
        limit = self.max_content_length
        if length is not None and ((limit is not None and length > limit)
                                   or (self.max_form_memory_size is not None and length > self.max_form_memory_size)):
            raise RequestEntityTooLarge()
        stream = environ["wsgi.input"]
        try:
            items = parse_qsl(stream.read(length or 0).decode(), keep_blank_values=True,
                              errors="werkzeug.url_quote")
        except ValueError:  # werkzeug's parser is silent: an empty form
            items = []
        d = self.__dict__
        d["stream"], d["form"], d["files"] = stream, MultiDict(items), MultiDict()

    @cached_property
    def cookies(self) -> Any:  # type: ignore[override]
        header = self.environ.get("HTTP_COOKIE", "")
        if '"' in header:
            return super().cookies
        out: dict[str, str] = {}
        for part in header.split(";"):
            name, _, value = part.partition("=")
            name = name.strip()
            if name and name not in out:
                out[name] = value.strip()
        return out


class JsonReply:
    """An xqueue envelope reply: what werkzeug's Response sends for it
    (status line, Content-Type, Content-Length, cookies, extra headers),
    built directly."""

    __slots__ = ("body", "status_code", "extra")

    def __init__(self, body: str, status: int) -> None:
        self.body = body.encode()
        self.status_code = status
        self.extra: list[tuple[str, str]] = []

    def set_cookie(self, key: str, value: str = "", max_age: int | None = None, expires: Any = None,
                   path: str | None = "/", domain: str | None = None, secure: bool = False,
                   httponly: bool = False, samesite: str | None = None) -> None:
        self.extra.append(("Set-Cookie", dump_cookie(key, value=value, max_age=max_age, expires=expires, path=path,
                                                     domain=domain, secure=secure, httponly=httponly,
                                                     samesite=samesite)))

    def delete_cookie(self, key: str, path: str | None = "/") -> None:
        self.set_cookie(key, expires=0, max_age=0, path=path)

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        start_response(_STATUS_LINES.get(self.status_code) or f"{self.status_code} UNKNOWN",
                       [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(self.body))),
                        *self.extra])
        return [self.body]


Reply = Union[Response, JsonReply]


class QueueApp:
    def __init__(self, config: QueueServerConfig, store: Store,
                 on_result: Callable[[Delivery], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.on_result = on_result or (lambda delivery: None)
        self.queues = set(config.queues)
        self._passwords = {u: p.get_secret_value().encode() for u, p in config.users.items()}
        self._sessions: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.edx = config.mode == "edx"
        self._base_urls: dict[tuple, str] = {}
        self.hint_pages: Any = None   # xgrader.hints.web.HintPages, set by queue_server.hint_routes
        from xgrader.queue_server.pages import Pages
        self.pages = Pages(self)   # the submissions dashboard and regrades (pages.py)

    # -- WSGI ----------------------------------------------------------------
    def __call__(self, environ: dict, start_response: Callable) -> Any:
        request = QueueRequest(environ)
        request.max_content_length = self.config.max_upload_bytes
        try:
            response = self.dispatch(request)
        except RequestEntityTooLarge:
            response = self.reply(1, f"request larger than {self.config.max_upload_bytes} bytes", 413)
        except Exception:
            log.exception("queue_request_failed", path=request.path, method=request.method)
            response = Response("internal error", 500, content_type="text/plain")
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Reply:
        path = request.path
        if path in ("/", PREFIX, PREFIX.rstrip("/")):
            return self.dashboard(request)
        if self.hint_pages is not None and self.hint_pages.handles(path):
            return self.hint_pages.respond(request)
        if self.pages.handles(path):
            return self.pages.dispatch(request)
        if path.startswith(PREFIX + "files/"):
            return self.serve_file(request, path[len(PREFIX + "files/"):])
        if path.startswith(PREFIX + "filemap/"):
            return self.serve_filemap(request, path[len(PREFIX + "filemap/"):].strip("/"))
        if path.startswith(PREFIX + "lms-callback/") and request.method == "POST":
            # A built-in LMS sink: `xgrader submit` without --callback points here,
            # so the delivery is recorded as done (the result is in the database).
            return Response("OK", 200, content_type="text/plain")
        if not path.startswith(PREFIX):
            return Response("not found", 404, content_type="text/plain")
        name = path[len(PREFIX):]
        if name in ENDPOINTS:  # Django's APPEND_SLASH: 301, never follow with a POST
            target = path + "/" + (("?" + request.query_string.decode("latin-1")) if request.query_string else "")
            return redirect(target, 301)
        name = name.rstrip("/")
        if name not in ENDPOINTS or not path.endswith("/") or path != PREFIX + name + "/":
            return Response("not found", 404, content_type="text/plain")
        if request.method == "POST" and self.edx and not self.csrf_ok(request):
            return self.reply(1, "CSRF verification failed", 403)
        if name in PROTECTED:
            user = self.user_of(request)
            if user is None:
                if self.edx:
                    return self.reply(1, "login_required", 401)
                return redirect(f"{PREFIX}login/?next={quote(path)}", 302)
        return getattr(self, "view_" + name)(request)

    # -- helpers -------------------------------------------------------------
    def reply(self, code: int, content: Any, status: int | None = None) -> JsonReply:
        if status is None:
            status = EDX_STATUS.get(content, 200) if (self.edx and code) else 200
        return JsonReply(json.dumps({"return_code": code, "content": content}), status)

    def csrf_ok(self, request: Request) -> bool:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        header = request.headers.get("X-CSRFToken", "")
        return bool(cookie) and hmac.compare_digest(cookie, header) and bool(request.headers.get("Referer"))

    def user_of(self, request: Request) -> str | None:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        now = time.time()
        with self._lock:
            cached = self._sessions.get(token)
        if cached is None:
            cached = self.store.session(token)
            if cached is None:
                return None
            with self._lock:
                self._sessions[token] = cached
        user, expires = cached
        if expires <= now:
            with self._lock:
                self._sessions.pop(token, None)
            return None
        return user

    def expire_sessions(self) -> None:
        """Tests and operators: forget every session (clients must log in again)."""
        with self._lock:
            self._sessions.clear()
        with self.store.conn() as c:
            c.execute("DELETE FROM sessions")

    def base_url(self, request: Request) -> str:
        environ = request.environ
        key = (environ.get("HTTP_HOST"), environ.get("SERVER_NAME"), environ.get("SERVER_PORT"))
        url = self._base_urls.get(key)
        if url is None:
            url = request.host_url.rstrip("/") + PREFIX
            if len(self._base_urls) < 64:  # the Host header is the client's: bounded
                self._base_urls[key] = url
        return url

    # -- endpoints -----------------------------------------------------------
    def view_login(self, request: Request) -> Reply:
        if request.method != "POST":
            response = self.reply(1, "login_required", 200)
            if not request.cookies.get(CSRF_COOKIE):
                response.set_cookie(CSRF_COOKIE, secrets.token_hex(16), path="/", samesite="Lax")
            return response
        user, password = request.form.get("username"), request.form.get("password")
        if user is None or password is None:  # legacy: both fields present, even if empty
            return self.reply(1, "Insufficient login info")
        expected = self._passwords.get(user)
        # compare even for unknown users so timing does not reveal names
        if not hmac.compare_digest(expected or b"\0" * 32, password.encode()) or expected is None:
            log.warning("queue_login_failed", user=user[:64])
            return self.reply(1, "Incorrect login credentials")
        token, expires = self.store.new_session(user, self.config.session_ttl_s)
        with self._lock:
            self._sessions[token] = (user, expires)
        nxt = request.form.get("next")
        if nxt:  # the dashboard's login form: back to the page, never to another site
            response = redirect(same_origin_path(nxt) or "/", 302)
        else:
            response = self.reply(0, "Logged in")
        response.set_cookie(SESSION_COOKIE, token, max_age=max(1, int(self.config.session_ttl_s)), path="/",
                            httponly=True, samesite="Lax")
        if self.edx:  # Django rotates the CSRF token at login
            response.set_cookie(CSRF_COOKIE, secrets.token_hex(16), path="/", samesite="Lax")
        return response

    def view_logout(self, request: Request) -> Reply:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            with self._lock:
                self._sessions.pop(token, None)
            self.store.drop_session(token)
        response = self.reply(0, "Goodbye")
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def view_status(self, request: Request) -> Reply:
        return self.reply(0, "OK")

    def view_submit(self, request: Request) -> Reply:
        if request.method != "POST":
            return self.reply(1, "Queue requests should use HTTP POST")
        header_raw, body_raw = request.form.get("xqueue_header"), request.form.get("xqueue_body")
        try:
            header = json.loads(header_raw) if header_raw is not None else None
        except ValueError:
            header = None
        if (body_raw is None or not isinstance(header, dict)
                or not all(k in header for k in ("lms_callback_url", "lms_key", "queue_name"))):
            return self.reply(1, "Queue request has invalid format")
        queue = str(header["queue_name"])
        if queue not in self.queues:
            return self.reply(1, f"Queue '{queue}' not found", 404 if self.edx else None)
        files = {}
        for field, storage in request.files.items(multi=True):
            files[field] = (storage.filename or field, storage.read())  # legacy keys by field name
        sid, length = self.store.submit(queue, str(header["lms_callback_url"]), str(header["lms_key"]),
                                        header_raw, body_raw, files)
        log.debug("queue_submitted", submission_id=sid, queue=queue, files=len(files))
        response = self.reply(0, str(length))
        response.extra.append(("X-Xgrader-Submission-Id", str(sid)))  # additive: lets `xgrader submit` print it
        return response

    def _queue_param(self, request: Request, view: str) -> tuple[str | None, Reply | None]:
        queue = request.args.get("queue_name")
        if not queue:
            return None, self.reply(1, f"'{view}' must provide parameter 'queue_name'", 400 if self.edx else None)
        return queue, None

    def view_get_queuelen(self, request: Request) -> Reply:
        queue, error = self._queue_param(request, "get_queuelen")
        if error:
            return error
        if queue not in self.queues:
            return self.reply(1, "Valid queue names are: " + ", ".join(self.config.queues),
                              404 if self.edx else None)
        return self.reply(0, self.store.queue_length(queue))

    def view_get_submission(self, request: Request) -> Reply:
        queue, error = self._queue_param(request, "get_submission")
        if error:
            return error
        if queue not in self.queues:
            return self.reply(1, f"Queue '{queue}' not found", 404 if self.edx else None)
        pulled = self.store.pull(queue, self.config.lease_timeout_s)
        if pulled is None:
            return self.reply(1, f"Queue '{queue}' is empty", 404 if self.edx else None)
        base = self.base_url(request)
        files = {name: f"{base}files/{token}" for name, token in pulled.files.items()}
        if self.config.external_dicts_over and len(files) > self.config.external_dicts_over:
            files = {"URL_FOR_EXTERNAL_DICTS": f"{base}filemap/{pulled.id}/"}
        content = json.dumps({
            "xqueue_header": json.dumps({"submission_id": pulled.id, "submission_key": pulled.key}),
            "xqueue_body": pulled.body,
            "xqueue_files": json.dumps(files),
        })
        return self.reply(0, content)

    def view_put_result(self, request: Request) -> Reply:
        if request.method != "POST":
            return self.reply(1, "'put_result' must use HTTP POST")
        header_raw, body = request.form.get("xqueue_header"), request.form.get("xqueue_body")
        try:
            header = json.loads(header_raw) if header_raw is not None else None
            sid, key = int(header["submission_id"]), str(header["submission_key"])
        except (ValueError, TypeError, KeyError):
            return self.reply(1, "Incorrect reply format")
        if body is None:
            return self.reply(1, "Incorrect reply format")
        if not 0 < sid < 2**63:  # beyond SQLite's integers: no such row
            return self.reply(1, "Submission does not exist")
        status, delivery = self.store.put_result(sid, key, body)
        if status == PutStatus.NO_SUCH:
            return self.reply(1, "Submission does not exist")
        if status == PutStatus.BAD_KEY:
            log.warning("queue_put_bad_key", submission_id=sid)
            return self.reply(1, "Incorrect key for submission")
        if status == PutStatus.DUPLICATE:
            log.warning("queue_put_duplicate", submission_id=sid)  # accepted, never delivered twice
        elif delivery is not None:
            self.on_result(delivery)
        return self.reply(0, "")

    # -- files, dashboard ----------------------------------------------------
    def serve_file(self, request: Request, token: str) -> Response:
        found = self.store.file(token.strip("/")) if len(token) <= 64 else None
        if found is None:
            return Response("not found", 404, content_type="text/plain")
        name, data = found
        response = Response(data, 200, content_type="application/octet-stream")
        response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"
        return response

    def serve_filemap(self, request: Request, sid: str) -> Reply:
        if self.user_of(request) is None:
            return self.reply(1, "login_required", 401 if self.edx else 403)
        with self.store.conn() as c:
            row = c.execute("SELECT files FROM submissions WHERE id=?", (int(sid) if sid.isdigit() and len(sid) < 19 else -1,)).fetchone()
        if row is None:
            return Response("not found", 404, content_type="text/plain")
        base = self.base_url(request)
        files = {name: f"{base}files/{token}" for name, token in json.loads(row[0]).items()}
        return Response(json.dumps(files), 200, content_type="application/json")

    def dashboard(self, request: Request) -> Response:
        if self.user_of(request) is None:
            return Response(login_page(request.path), 200, content_type="text/html; charset=utf-8")
        counts, rows = self.store.overview()
        page = render_dashboard(self.config.queues, counts, rows, time.time())
        return Response(page, 200, content_type="text/html; charset=utf-8")


# What a same-origin path may hold: RFC 3986's unreserved, sub-delims, ":",
# "@", "/", "?", "%" (as escapes). No control characters or spaces (browsers
# drop tabs and newlines, so `/\t/evil` becomes `//evil`), no backslash
# (read as `/`), no "#" or non-ASCII.
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%?]*\Z")
_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def same_origin_path(target: str) -> str | None:
    """`target` when it is a path on this server (`/...`), else None. A
    path holding `//` is refused (a browser reads a leading `//` as another
    host); removing dot segments never creates an empty segment, so
    `/.//x` or `/a/..//x` are caught here too."""
    if not target.startswith("/") or not _PATH_CHARS.match(target) or _ESCAPE.search(target):
        return None
    if "//" in target.partition("?")[0]:
        return None
    return target


def redirect(location: str, code: int) -> Response:
    response = Response("", code, content_type="text/html; charset=utf-8")
    response.headers["Location"] = location
    return response
