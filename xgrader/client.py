"""The xqueue client the daemon pulls and posts with (shared/xqueue-protocol.md).

Works against legacy xqueue (HTTP 200 + `{"return_code", "content"}`
envelopes, 302 to the login page) and edx-submissions (real status codes,
CSRF enforced): it always GETs `login/` first for the `csrftoken` cookie and
sends `X-CSRFToken` + `Referer` on every POST. A request answered with
301/302/401/403 or `login_required` logs in again, once per request, then
is retried. Connection errors and 5xx are retried with tenacity
(exponential backoff with jitter, bounded), except for put_result: it is
sent again only when it provably never left (the connection could not be
made, or a kept-alive socket was found closed before anything was written)
or a proxy answered 502/503/504; a 500, a reset or a timeout after the body
went out may have been processed, so it is never resent. Secrets are never
logged.

Server flavours: :attr:`XQueueClient.flavor` says what login/ looked like
(`edx-submissions` answers a GET with return_code 0 and a CSRF cookie,
legacy xqueue and the bundled server with `login_required`), and
`get_queuelen/` answering 404 (edx-submissions has none) raises
:class:`EndpointMissing` instead of counting as a bad reply.

The calls the daemon makes for every submission (get_submission,
put_result, get_queuelen) go over a fast path when the queue URL is plain
http without a proxy: one kept-alive socket, the request written in one
send, the reply parsed by http.client, cookies read from (and Set-Cookie
stored into) the same requests cookie jar. It raises the same requests
exceptions, so retries, hooks and re-login behave as on the requests path;
it costs ~0.2 ms of CPU per call instead of ~1.1 ms through requests.
Login, logout and status always use requests; file downloads go through
xgrader.downloads (credentials to the queue's origin only, peer addresses
checked at connect time).
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlparse

import requests
from requests.cookies import MockRequest, MockResponse
import structlog
from tenacity import (Retrying, retry_if_exception, stop_after_attempt, stop_after_delay,
                      wait_random_exponential)

from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from xgrader.downloads import MAX_FILES, FileFetcher, FilesPayloadError  # noqa: F401 - re-exported
from xgrader.hooks import Hooks, safe_call
from xgrader.logs import clip
from xgrader.wire import GraderReply

if TYPE_CHECKING:
    from xgrader.config import Settings

log = structlog.get_logger(__name__)

RETRY_ATTEMPTS = 4
RETRY_MAX_S = 20.0
# Statuses that mean "the request did not reach the application": safe to
# send again even for put_result (a proxy answered, or the server restarted).
GATEWAY_STATUSES = {502, 503, 504}
AUTH_STATUSES = {301, 302, 401, 403}
# Replies that are answers, not authentication problems, even with a 403.
NOT_AUTH = {"Incorrect key for submission", "Submission does not exist", "Incorrect reply format"}
EDX_SUBMISSIONS = "edx-submissions"
XQUEUE = "xqueue"


class QueueError(RuntimeError):
    """The queue server answered, but not with what the call needs."""

    def __init__(self, message: str, kind: str = "bad_reply", status: int | None = None) -> None:
        self.kind = kind
        self.status = status   # the HTTP status, when that was the problem
        super().__init__(message)


class LoginError(QueueError):
    """Not logged in. `refused`: the server answered and said no (wrong
    credentials, no permission, no login endpoint there), as opposed to a
    server that could not be reached or failed (5xx): those are transient."""

    def __init__(self, message: str, refused: bool = True) -> None:
        self.refused = refused
        super().__init__(message, kind="login")


class UnknownQueue(QueueError):
    """The server does not know the queue (legacy xqueue's `Queue 'x' not
    found`, `Valid queue names are: ...`). edx-submissions cannot say: an
    unknown queue is empty there."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="unknown_queue")


class EndpointMissing(QueueError):
    """The server has no such endpoint (HTTP 404 without an xqueue reply):
    edx-submissions has no get_queuelen/."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="not_found")


@dataclass
class _Reply:
    """What the fast path answers with: the two fields the client reads."""

    status_code: int
    text: str


class _Retryable(Exception):
    """A 5xx worth another try (raised inside the tenacity loop)."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        super().__init__(f"HTTP {response.status_code}")


class _ConnectFailed(requests.ConnectionError):
    """The fast path could not connect: nothing was sent."""


@dataclass(frozen=True)
class PutOutcome:
    accepted: bool
    foreign_key: bool = False   # "Incorrect key for submission": another grader owns the pull now
    rejected: bool = False      # any other refusal (message says why)
    message: str = ""


class XQueueClient:
    def __init__(self, settings: Settings, hooks: Hooks | None = None) -> None:
        self.settings = settings
        self.base = settings.queue_url if settings.queue_url.endswith("/") else settings.queue_url + "/"
        self.hooks = hooks or Hooks()
        self.timeout = (min(settings.request_timeout_s, 10.0), settings.request_timeout_s)
        self.put_timeout = (min(settings.request_timeout_s, 10.0), settings.put_result_timeout_s)
        self._session: requests.Session | None = self._new_session()
        self._inherited_cookies: Any = None   # after_fork: the parent's jar, copied on first use
        parsed = urlparse(self.base)
        self._host, self._port = parsed.hostname or "", parsed.port or 80
        # Credentials in the URL are requests' business (it turns them into
        # basic auth): such a URL keeps the requests path.
        self._fast_ok = (parsed.scheme == "http" and bool(self._host) and not self._session.proxies
                         and parsed.username is None)
        self._sock: socket.socket | None = None   # the fast path's kept-alive connection
        self._cookie_cache: dict[str, tuple[Any, str | None]] = {}
        self._parents: tuple[Any, ...] | None = None   # after_fork: the parent's, kept alive unused
        self.flavor: str | None = None   # EDX_SUBMISSIONS | XQUEUE once login/ answered a GET

    # -- session -------------------------------------------------------------
    @property
    def session(self) -> requests.Session:
        """The requests session; after a fork, a new one is built on first use."""
        session = self._session
        if session is None:
            session = self._session = self._new_session()
            if self._inherited_cookies is not None:
                session.cookies.update(self._inherited_cookies)
                self._inherited_cookies = None
        return session

    @session.setter
    def session(self, session: requests.Session) -> None:
        self._session = session
        self._inherited_cookies = None

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        session.headers["User-Agent"] = "xgrader"
        # requests re-reads proxy and CA settings from os.environ on every
        # request (~0.4 ms each); read them once here instead.
        session.trust_env = False
        session.proxies = requests.utils.get_environ_proxies(self.base)
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        user = getattr(self.settings, "basic_auth_user", None)
        password = getattr(self.settings, "basic_auth_password", None)
        if user and password is not None:
            session.auth = (user, password.get_secret_value())
        return session

    def after_fork(self) -> None:
        """In a forked child: a fresh connection pool (the parent's sockets are
        not ours to use), same cookies (the session stays logged in).

        Lazy: the parent's session is only let go of here; the new one (with a
        copy of the cookies) is built when the child first sends a request.
        A daemon child usually sends none (the parent posts), and building a
        session cost ~2 ms of CPU per submission, most of it copy-on-write
        faults."""
        # The parent's session and socket stay referenced (never used, never
        # closed here): letting them go would run their destructors (pools,
        # connections, the socket) in every child for nothing.
        self._parents = (self._parents or ()) + (self._session, self._sock)
        if self._session is not None:
            self._inherited_cookies = self._session.cookies
            self._session = None
        self._sock = None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._drop_socket()

    def _hook(self, name: str, *args: Any) -> None:
        safe_call(getattr(self.hooks, name), *args)

    # -- HTTP core -----------------------------------------------------------
    def _post_headers(self) -> dict[str, str]:
        headers = {"Referer": self.base}
        token = self._csrf_token()
        if token:
            headers["X-CSRFToken"] = token
        return headers

    def _csrf_token(self) -> str | None:
        for cookie in self.session.cookies:
            if cookie.name == "csrftoken":
                return cookie.value
        return None

    def _send(self, method: str, url: str, *, params: dict | None = None, data: dict | None = None,
              timeout: tuple[float, float], idempotent: bool = True,
              fast: bool = False) -> requests.Response | _Reply:
        """One logical request with bounded retries. Non-idempotent calls
        (put_result) are only resent when the request provably never left
        (no connection could be made; a stale kept-alive socket is found
        before writing, and replaced, on both paths) or a proxy answered
        502/503/504; never after a reset, a read timeout or a 500, which
        may come after the server processed it. `fast`: over the fast path
        when the URL allows it."""
        fast = fast and self._fast_ok and url.startswith(self.base)

        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, _Retryable):
                return idempotent or exc.response.status_code in GATEWAY_STATUSES
            if isinstance(exc, requests.ConnectionError):   # ConnectTimeout included
                return idempotent or _never_sent(exc)
            return isinstance(exc, requests.Timeout) and idempotent

        def once() -> requests.Response | _Reply:
            headers = self._post_headers() if method == "POST" else None
            try:
                if fast:
                    resp = self._fast_request(method, url, params, data, headers, timeout)
                else:
                    resp = self.session.request(method, url, params=params, data=data, headers=headers,
                                                timeout=timeout, allow_redirects=False)
            except requests.Timeout:
                self._hook("on_client_error", "timeout")
                raise
            except requests.ConnectionError:
                self._hook("on_client_error", "connect")
                raise
            if resp.status_code >= 500:
                self._hook("on_client_error", "http_5xx")
                raise _Retryable(resp)
            return resp

        retrying = Retrying(
            stop=stop_after_attempt(RETRY_ATTEMPTS) | stop_after_delay(RETRY_MAX_S),
            wait=wait_random_exponential(multiplier=0.2, max=4.0),
            retry=retry_if_exception(retryable),
            reraise=True,
        )
        try:
            return retrying(once)
        except _Retryable as exc:
            raise QueueError(f"{_endpoint(url)}: HTTP {exc.response.status_code} from the queue server",
                             kind="http_5xx", status=exc.response.status_code) from None

    # -- fast path -------------------------------------------------------------
    def _fast_request(self, method: str, url: str, params: dict | None, data: dict | None,
                      headers: dict[str, str] | None, timeout: tuple[float, float]) -> _Reply:
        """One HTTP/1.1 exchange on the kept-alive socket. Errors are the
        requests exceptions the requests path raises for the same failure:
        ConnectTimeout (connecting), ReadTimeout (sent, no answer in time),
        ConnectionError (refused, reset, closed)."""
        target = urlparse(url)
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params, doseq=True)
        body = urlencode(data, doseq=True).encode() if data else b""
        session = self.session
        lines = [f"{method} {path} HTTP/1.1", f"Host: {target.netloc}",
                 f"User-Agent: {session.headers.get('User-Agent', 'xgrader')}", "Accept: */*"]
        cookie = self._cookie_header(url)
        if cookie:
            lines.append(f"Cookie: {cookie}")
        auth = self._auth_header()
        if auth:
            lines.append(f"Authorization: {auth}")
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if method == "POST" or body:
            lines += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

        sock = self._sock
        if sock is not None and _dropped(sock):
            self._drop_socket()
            sock = None
        if sock is None:
            try:
                sock = socket.create_connection((self._host, self._port), timeout=timeout[0])
            except socket.timeout as exc:
                raise requests.ConnectTimeout(f"connecting to {target.netloc}: {exc}") from None
            except OSError as exc:
                raise _ConnectFailed(f"connecting to {target.netloc}: {exc}") from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
        try:
            sock.settimeout(timeout[1])
            sock.sendall(request)
            resp = http.client.HTTPResponse(sock, method=method)
            try:
                resp.begin()
                raw = resp.read()
            finally:
                resp.close()
        except socket.timeout as exc:
            self._drop_socket()
            raise requests.ReadTimeout(f"{target.path}: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            self._drop_socket()
            raise requests.ConnectionError(f"{target.path}: {type(exc).__name__}: {exc}") from None
        if resp.will_close:
            self._drop_socket()
        if resp.msg.get_all("Set-Cookie"):
            session.cookies.extract_cookies(MockResponse(resp.msg),
                                            MockRequest(SimpleNamespace(url=url, headers=headers or {})))
        return _Reply(resp.status, raw.decode(_charset(resp.msg.get("Content-Type", "")), "replace"))

    def _cookie_header(self, url: str) -> str | None:
        """The Cookie header requests would send for `url` (its cookie policy:
        domain, path, expiry), recomputed only when the jar changed."""
        jar = self.session.cookies
        now = time.time()
        state = tuple((c.name, c.value, c.domain, c.path, c.expires) for c in jar)
        key = url.split("?", 1)[0]
        hit = self._cookie_cache.get(key)
        if hit is not None and hit[0] == (id(jar), state) and not any(
                c[4] is not None and c[4] <= now for c in state):
            return hit[1]
        probe = MockRequest(SimpleNamespace(url=url, headers={}))
        jar.add_cookie_header(probe)
        header = probe.get_new_headers().get("Cookie")
        self._cookie_cache[key] = ((id(jar), state), header)
        return header

    def _auth_header(self) -> str | None:
        auth = self.session.auth
        if not auth:
            return None
        probe = SimpleNamespace(headers={})
        (requests.auth.HTTPBasicAuth(*auth) if isinstance(auth, tuple) else auth)(probe)
        return probe.headers.get("Authorization")

    def _drop_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _envelope(self, resp: requests.Response, endpoint: str) -> tuple[int, Any]:
        """Legacy xqueue sends JSON as text/html: parse whatever the type says."""
        try:
            data = json.loads(resp.text)
            return int(data["return_code"]), data["content"]
        except (ValueError, KeyError, TypeError):
            self._hook("on_client_error", "bad_envelope")
            raise QueueError(f"{endpoint}: not an xqueue reply (HTTP {resp.status_code}): "
                             f"{clip(resp.text, 120)!r}", kind="bad_envelope") from None

    def _needs_login(self, resp: requests.Response) -> bool:
        if resp.status_code in (301, 302, 401):
            return True
        try:
            content = json.loads(resp.text).get("content")
        except (ValueError, AttributeError):
            return resp.status_code == 403
        if content == "login_required":
            return True
        return resp.status_code == 403 and content not in NOT_AUTH

    def _call(self, method: str, endpoint: str, *, params: dict | None = None, data: dict | None = None,
              timeout: tuple[float, float] | None = None, idempotent: bool = True,
              fast: bool = True) -> tuple[int, Any]:
        url = self.base + endpoint
        resp = self._send(method, url, params=params, data=data, timeout=timeout or self.timeout,
                          idempotent=idempotent, fast=fast)
        if self._needs_login(resp):
            # The session expired (or never was): log in again, once, then retry.
            log.info("queue_relogin", endpoint=endpoint, status=resp.status_code)
            self._hook("on_relogin")
            self.login()
            resp = self._send(method, url, params=params, data=data, timeout=timeout or self.timeout,
                              idempotent=idempotent, fast=fast)
            if self._needs_login(resp):
                self._hook("on_client_error", "login")
                hint = (" (edx-submissions: the user must be in the 'xqueue' group)"
                        if resp.status_code == 403 and self.flavor == EDX_SUBMISSIONS else "")
                raise LoginError(f"{endpoint}: still not authorised after logging in again "
                                 f"(HTTP {resp.status_code}){hint}")
        if resp.status_code == 404 and not _is_envelope(resp.text):
            raise EndpointMissing(f"{endpoint}: HTTP 404, the server has no such endpoint")
        return self._envelope(resp, endpoint)

    # -- protocol ------------------------------------------------------------
    def login(self) -> None:
        """GET login/ (sets csrftoken on edx-submissions, and tells the
        flavours apart), then POST the form. Raises LoginError(refused=True)
        when the server answered no, refused=False when it could not say."""
        url = self.base + "login/"
        probe = self._send("GET", url, timeout=self.timeout)
        resp = self._send("POST", url, timeout=self.timeout, data={
            "username": self.settings.queue_user,
            "password": self.settings.queue_password.get_secret_value(),
        })
        self._note_flavor(probe)
        try:
            code, content = self._envelope(resp, "login/")
        except QueueError:
            raise LoginError(f"login/: unexpected reply (HTTP {resp.status_code}) from {self.base}",
                             refused=resp.status_code < 500) from None
        if code != 0:
            self._hook("on_client_error", "login")
            raise LoginError(f"login/ as {self.settings.queue_user!r} refused: {clip(content, 200)}")

    def _note_flavor(self, probe: requests.Response | _Reply) -> None:
        try:
            data = json.loads(probe.text)
            self.flavor = EDX_SUBMISSIONS if int(data["return_code"]) == 0 else XQUEUE
        except (ValueError, KeyError, TypeError):
            self.flavor = None

    def logout(self) -> None:
        self._send("POST", self.base + "logout/", timeout=self.timeout)

    def status(self) -> bool:
        """True when the server says it is up. POST with the session
        (edx-submissions only answers a logged-in POST; legacy takes any).
        edx-submissions 4.x answers 200 with a body that is not JSON (its
        view renders the reply dict as "return_codecontent"): a 200 that
        is not an xqueue reply counts as up."""
        url = self.base + "status/"
        resp = self._send("POST", url, timeout=self.timeout)
        if self._needs_login(resp):
            self._hook("on_relogin")
            self.login()
            resp = self._send("POST", url, timeout=self.timeout)
        if resp.status_code == 200 and not _is_envelope(resp.text):
            return True
        code, _ = self._envelope(resp, "status/")
        return code == 0

    def get_queuelen(self, queue: str) -> int | None:
        """Waiting submissions, or None when the server refuses. Raises
        UnknownQueue for a queue the server does not know, EndpointMissing
        where there is no get_queuelen/ (edx-submissions)."""
        code, content = self._call("GET", "get_queuelen/", params={"queue_name": queue})
        if code != 0:
            if isinstance(content, str) and content.startswith("Valid queue names are"):
                raise UnknownQueue(f"queue {queue!r} unknown to the server: {clip(content, 200)}")
            log.warning("queuelen_refused", queue=queue, reply=clip(content, 200))
            return None
        try:
            return int(content)
        except (TypeError, ValueError):
            raise QueueError(f"get_queuelen/: not a number: {clip(content, 80)!r}") from None

    def get_submission(self, queue: str) -> str | None:
        """The raw `content` string (parse it with xgrader.wire), or None when
        the queue is empty. An unknown queue raises UnknownQueue; other
        refusals QueueError."""
        code, content = self._call("GET", "get_submission/", params={"queue_name": queue})
        if code == 0:
            return content if isinstance(content, str) else json.dumps(content)
        if isinstance(content, str) and content.endswith("is empty"):
            return None
        if isinstance(content, str) and content.endswith("not found"):
            raise UnknownQueue(f"queue {queue!r} unknown to the server: {clip(content, 200)}")
        raise QueueError(f"get_submission/ {queue!r}: {clip(content, 200)}", kind="refused")

    def put_result(self, header_raw: str, reply: GraderReply) -> PutOutcome:
        """Post the reply under the header exactly as received. Never resent
        once the server may have processed it: a QueueError (kind http_5xx)
        or a requests error then means "maybe processed"."""
        code, content = self._call(
            "POST", "put_result/", data={"xqueue_header": header_raw, "xqueue_body": reply.to_body()},
            timeout=self.put_timeout, idempotent=False)
        if code == 0:
            return PutOutcome(accepted=True)
        message = str(content)
        if message == "Incorrect key for submission":
            return PutOutcome(accepted=False, foreign_key=True, message=message)
        return PutOutcome(accepted=False, rejected=True, message=clip(message, 300))

    # -- files ---------------------------------------------------------------
    def fetch_files(self, files: dict[str, str]) -> dict[str, bytes]:
        """Download every file of `xqueue_files` (xgrader.downloads): the
        session's credentials go to the queue's own origin only, other
        hosts are checked at connect time. Bad maps, refused URLs and
        oversized files raise FilesPayloadError (answered as a submission
        problem); network failures raise InfraError (retried, bounded)."""
        fetcher = FileFetcher(self.settings, queue_url=self.base, queue_session=lambda: self.session,
                              timeout=self.timeout)
        try:
            return fetcher.fetch_files(files)
        finally:
            fetcher.close()


def _dropped(sock: socket.socket) -> bool:
    """A kept-alive socket the server closed (or wrote to unasked): readable
    while no request is outstanding. urllib3 checks its pool the same way."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _never_sent(exc: BaseException) -> bool:
    """The request cannot have reached the server: the connection was never
    made (the fast path's own error, or urllib3's new-connection errors)."""
    if isinstance(exc, (_ConnectFailed, requests.ConnectTimeout)):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, (NewConnectionError, ConnectTimeoutError))


def _is_envelope(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            value = value.strip('"')
            try:
                "".encode(value)
                return value
            except LookupError:
                break
    return "utf-8"


def _endpoint(url: str) -> str:
    return urlparse(url).path.rstrip("/").rsplit("/", 1)[-1] + "/"
