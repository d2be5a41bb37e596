"""Posts results to the LMS (`lms_callback_url`) in the background, as
xqueue does: form fields `xqueue_header` (the LMS header, verbatim) and
`xqueue_body` (the grader reply, verbatim), bounded retries with doubling
backoff, every attempt recorded in the store so a restart resumes pending
deliveries. Each submission is delivered at most once per successful post:
only the first put_result ever enters the `pending` delivery state.

A fresh result is handed over by put_result (`submit`) and posted at once
by one of a fixed set of worker threads; the database is scanned only for
retries and for results a crash left pending (all due again at start-up).
Callbacks go through urllib3's connection pools (kept-alive connections per
LMS host, checked for a close by the LMS before reuse; http and https), one
try per attempt: a failed post waits for its next scheduled attempt.

The reply's status line decides. Its body is read only when it is framed by
one Content-Length of ASCII digits, and only then is the connection used
again; any other framing (chunked, read to close) closes the connection
unread, so no chunk size or length is ever interpreted leniently and a reply
cannot leave bytes that would be read as the next reply. A repeated or
malformed Content-Length, or one next to Transfer-Encoding, is an error."""

from __future__ import annotations

import queue
import re
import threading
import time
from urllib.parse import urlencode

import structlog
import urllib3
from urllib3.exceptions import HTTPError, LocationParseError
from urllib3.util import parse_url

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
        self._http = urllib3.PoolManager(
            num_pools=64, maxsize=max(1, workers), block=False, retries=False,
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s), headers=_HEADERS)
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
        if self._thread.is_alive():
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
        self._http.clear()

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
        url = item.callback_url
        if _BAD_URL_CHARS.search(url):
            return False, "unsupported callback URL: control characters, spaces or non-ASCII"
        try:
            parts = parse_url(url)
        except LocationParseError:
            return False, "unsupported callback URL: not a URL"
        if parts.scheme not in ("http", "https") or not parts.host:
            return False, "unsupported callback URL scheme"
        body = urlencode({"xqueue_header": item.header, "xqueue_body": item.result}).encode()
        try:
            resp = self._http.request("POST", url, body=body, redirect=False, preload_content=False,
                                      decode_content=False)
        except (HTTPError, OSError) as exc:
            return False, f"{type(exc).__name__}: {str(exc)[:200]}"
        try:
            error = _read_reply(resp)
        finally:
            resp.release_conn()
        if error:
            return False, error
        if 200 <= resp.status < 300:
            return True, ""
        return False, f"HTTP {resp.status}"


_HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "xgrader-queue"}
_BAD_URL_CHARS = re.compile("[\x00-\x20\x7f-\U0010ffff]")  # what http.client refuses in a request line
_DIGITS = re.compile(r"[0-9]{1,18}\Z")
MAX_REPLY_BYTES = 1024 * 1024  # an LMS callback reply is a few bytes; a larger one is not read


def _read_reply(resp: urllib3.BaseHTTPResponse) -> str:
    """Consume the reply as its framing allows (see the module docstring);
    '' when it is well-formed, else the error."""
    lengths = [v.strip(" \t") for v in resp.headers.getlist("content-length")]  # less optional whitespace
    chunked = "transfer-encoding" in resp.headers
    if lengths and (chunked or len(lengths) > 1 or not _DIGITS.match(lengths[0])):
        resp.close()
        what = "with Transfer-Encoding" if chunked else ", ".join(lengths)[:80]
        return f"malformed reply from the LMS: Content-Length {what}"
    if lengths and int(lengths[0]) <= MAX_REPLY_BYTES:
        try:
            resp.read(decode_content=False)  # exactly Content-Length bytes
        except (HTTPError, OSError) as exc:
            resp.close()
            return f"{type(exc).__name__}: {str(exc)[:200]}"
    elif lengths or resp.status not in (204, 304):
        resp.close()  # chunked, ends at close, or too large: the status is all we need
    return ""
