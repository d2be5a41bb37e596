"""Posts results to the LMS (`lms_callback_url`) in the background, as
xqueue does: form fields `xqueue_header` (the LMS header, verbatim) and
`xqueue_body` (the grader reply, verbatim), bounded retries with doubling
backoff, every attempt recorded in the store so a restart resumes pending
deliveries. Each submission is delivered at most once per successful post:
only the first put_result ever enters the `pending` delivery state.

A fresh result is handed over by put_result (`submit`) and posted at once
by one of a fixed set of worker threads; the database is scanned only for
retries and for results a crash left pending (all due again at start-up).
Plain-http callbacks are posted on a kept-alive socket per worker and LMS
host with a minimal HTTP/1.1 exchange (Content-Length or chunked replies,
or read to close); https goes through http.client."""

from __future__ import annotations

import http.client
import queue
import re
import socket
import threading
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import structlog

from xgrader.queue_server.store import Delivery, Store

log = structlog.get_logger(__name__)


class Deliverer:
    def __init__(self, store: Store, *, tries: int = 5, backoff_s: float = 1.0,
                 timeout_s: float = 10.0, workers: int = 8) -> None:
        self.store = store
        self.tries = tries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._busy: set[int] = set()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._jobs: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._workers = [threading.Thread(target=self._work, name=f"xq-deliver-{i}", daemon=True)
                         for i in range(max(1, workers))]
        self._thread = threading.Thread(target=self._run, name="xq-deliverer", daemon=True)

    def start(self) -> "Deliverer":
        self.store.deliveries_due_now()
        for w in self._workers:
            w.start()
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def submit(self, item: Delivery) -> None:
        """A fresh result, straight from put_result: post it now, without a
        database scan per result. Retries come back through the scan."""
        with self._lock:
            if item.id in self._busy or self._stop.is_set():
                return  # the scan (after a restart) will find it
            self._busy.add(item.id)
        self._jobs.put(item)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop scheduling; in-flight posts finish (each bounded by its
        timeout); queued ones stay pending in the database, due at the next
        start."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        while True:
            try:
                if self._jobs.get_nowait() is None:
                    continue
            except queue.Empty:
                break
        for _ in self._workers:
            self._jobs.put(None)
        for w in self._workers:
            if w.is_alive():
                w.join()

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            if self._stop.is_set():  # queued before stop(): due again at the next start
                with self._lock:
                    self._busy.discard(item.id)
                continue
            self._deliver(item)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    busy = frozenset(self._busy)
                due = self.store.due_deliveries(exclude=busy)
                for item in due:
                    with self._lock:
                        self._busy.add(item.id)
                    self._jobs.put(item)
                nxt = self.store.next_delivery_at()
            except Exception:
                log.exception("delivery_scan_failed")
                nxt = None
            wait = 1.0 if nxt is None else min(1.0, max(0.02, nxt - time.time()))
            self._wake.wait(wait)
            self._wake.clear()

    def _conn(self, scheme: str, netloc: str) -> tuple[Any, bool]:
        """A kept-alive connection per worker thread and LMS host. Returns
        (connection, reused)."""
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get((scheme, netloc))
        if conn is not None:
            return conn, True
        if scheme == "https":
            conn = _TLSConnection(netloc, timeout=self.timeout_s)
        else:
            conn = _PlainConnection(netloc, self.timeout_s)
        conns[(scheme, netloc)] = conn
        return conn, False

    def _drop(self, scheme: str, netloc: str) -> None:
        conn = self._local.conns.pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def _deliver(self, item: Delivery) -> None:
        retry_at = None
        try:
            ok, error = self._post(item)
            tries = item.tries + 1
            retry_at = None
            if not ok and tries < self.tries and not error.startswith("unsupported"):
                retry_at = time.time() + self.backoff_s * 2 ** (tries - 1)
            self.store.delivery_done(item.id, ok, error, retry_at)
            if ok:
                log.debug("result_delivered", submission_id=item.id, tries=tries)
            elif retry_at is None:
                log.error("result_delivery_failed", submission_id=item.id, tries=tries, error=error)
            else:
                log.warning("result_delivery_retry", submission_id=item.id, tries=tries, error=error)
        except Exception:
            log.exception("delivery_crashed", submission_id=item.id)
        finally:
            with self._lock:
                self._busy.discard(item.id)
            if retry_at is not None:
                self._wake.set()  # the scan's timer must cover the new retry time

    def _post(self, item: Delivery) -> tuple[bool, str]:
        scheme, netloc, target = split_callback(item.callback_url)
        if scheme not in ("http", "https") or not netloc:
            return False, "unsupported callback URL scheme"
        body = urlencode({"xqueue_header": item.header, "xqueue_body": item.result}).encode()
        for _ in range(2):
            reused = False
            try:
                conn, reused = self._conn(scheme, netloc)
                status, will_close = conn.post(target, body)
                if will_close:
                    self._drop(scheme, netloc)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop(scheme, netloc)
                if reused:
                    continue  # the LMS closed an idle kept-alive connection: once more on a new one
                return False, f"{type(exc).__name__}: {str(exc)[:200]}"
            except (OSError, http.client.HTTPException) as exc:
                self._drop(scheme, netloc)
                return False, f"{type(exc).__name__}: {str(exc)[:200]}"
            if 200 <= status < 300:
                return True, ""
            return False, f"HTTP {status}"
        return False, "connection closed by the LMS"


_PLAIN_URL = re.compile(r"(https?)://([^/?#]+)(/[^?#]*)?(?:\?([^#]*))?(?:#.*)?\Z", re.ASCII | re.DOTALL)


def split_callback(url: str) -> tuple[str, str, str]:
    """(scheme, netloc, request target) of a callback URL, as urlsplit gives
    them: one regular expression for the usual lowercase http(s) URL without
    whitespace or control characters, urlsplit (which also strips and drops
    some of those) for anything else."""
    m = _PLAIN_URL.match(url)
    if m is not None and not _BAD_URL_CHARS.search(url):
        scheme, netloc, path, query = m.groups()
    else:
        parts = urlsplit(url)
        scheme, netloc, path, query = parts.scheme, parts.netloc, parts.path, parts.query
    return scheme, netloc, (path or "/") + (f"?{query}" if query else "")


class _TLSConnection(http.client.HTTPSConnection):
    def post(self, target: str, body: bytes) -> tuple[int, bool]:
        self.request("POST", target, body=body, headers=_HEADERS)
        resp = self.getresponse()
        resp.read()
        return resp.status, resp.will_close


_HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "xgrader-queue"}
MAX_LINE = 65536
MAX_HEADERS = 100
_BAD_URL_CHARS = re.compile("[\x00-\x20\x7f-\U0010ffff]")  # what http.client refuses in a request line


class _PlainConnection:
    """One kept-alive plain-http connection to an LMS host: the request in
    one send, the reply read by hand (status line, header lines split at the
    first colon, the body by Content-Length, chunks, or to close), without
    http.client's per-reply email.message parsing. Raises what http.client
    raises for the same failures (RemoteDisconnected for a connection closed
    before a reply, OSError, HTTPException for a malformed reply)."""

    def __init__(self, netloc: str, timeout: float) -> None:
        self.netloc = netloc.rpartition("@")[2]
        try:
            parts = urlsplit("//" + self.netloc)
            self.addr = (parts.hostname or "", parts.port or 80)
        except ValueError as exc:
            raise http.client.InvalidURL(f"{self.netloc}: {exc}") from None
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.rfile: Any = None

    def close(self) -> None:
        sock, rfile, self.sock, self.rfile = self.sock, self.rfile, None, None
        for f in (rfile, sock):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    def post(self, target: str, body: bytes) -> tuple[int, bool]:
        """(status, will_close)."""
        if _BAD_URL_CHARS.search(target) or _BAD_URL_CHARS.search(self.netloc):
            raise http.client.InvalidURL(f"control characters, spaces or non-ASCII in the URL: {target[:100]!r}")
        if self.sock is None:
            self.sock = socket.create_connection(self.addr, timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.rfile = self.sock.makefile("rb")
        head = (f"POST {target} HTTP/1.1\r\nHost: {self.netloc}\r\nAccept-Encoding: identity\r\n"
                f"Content-Type: {_HEADERS['Content-Type']}\r\nUser-Agent: {_HEADERS['User-Agent']}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        self.sock.sendall(head.encode("latin-1") + body)
        rfile = self.rfile
        while True:
            line = rfile.readline(MAX_LINE + 1)
            if not line:
                raise http.client.RemoteDisconnected("Remote end closed connection without response")
            version, _, rest = line.decode("latin-1").strip().partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit():
                raise http.client.BadStatusLine(line[:100].decode("latin-1"))
            status = int(code)
            headers = self._headers(rfile)
            if status != 100:
                break
        conn = headers.get("connection", "").lower()
        will_close = conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._read_chunked(rfile)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise http.client.HTTPException("bad Content-Length") from None
            self._read_exactly(rfile, length)
        elif status in (204, 304) or 100 <= status < 200:
            pass
        else:  # no length: the body ends when the LMS closes
            while rfile.read(65536):
                pass
            will_close = True
        return status, will_close

    @staticmethod
    def _headers(rfile: Any) -> dict[str, str]:
        out: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = rfile.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                raise http.client.LineTooLong("header line")
            if line in (b"\r\n", b"\n", b""):
                return out
            name, colon, value = line.decode("latin-1").partition(":")
            if colon:
                key = name.strip().lower()
                out[key] = f"{out[key]}, {value.strip()}" if key in out else value.strip()
        raise http.client.HTTPException("too many headers")

    @staticmethod
    def _read_exactly(rfile: Any, n: int) -> None:
        while n > 0:
            chunk = rfile.read(min(n, 65536))
            if not chunk:
                raise http.client.IncompleteRead(b"", n)
            n -= len(chunk)

    def _read_chunked(self, rfile: Any) -> None:
        while True:
            line = rfile.readline(MAX_LINE + 1)
            if not line:
                raise http.client.IncompleteRead(b"")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise http.client.HTTPException("bad chunk size") from None
            if size == 0:
                self._headers(rfile)  # trailers, up to the blank line
                return
            self._read_exactly(rfile, size + 2)  # the chunk and its CRLF
