"""Posts results to the LMS (`lms_callback_url`) in the background, as
xqueue does: form fields `xqueue_header` (the LMS header, verbatim) and
`xqueue_body` (the grader reply, verbatim), bounded retries with doubling
backoff, every attempt recorded in the store so a restart resumes pending
deliveries. Each submission is delivered at most once per successful post:
only the first put_result ever enters the `pending` delivery state."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import requests
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
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xq-deliver")
        self._thread = threading.Thread(target=self._run, name="xq-deliverer", daemon=True)

    def start(self) -> "Deliverer":
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop scheduling; in-flight posts finish (each bounded by its timeout)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    busy = frozenset(self._busy)
                due = self.store.due_deliveries(exclude=busy)
                for item in due:
                    with self._lock:
                        self._busy.add(item.id)
                    self._pool.submit(self._deliver, item)
                nxt = self.store.next_delivery_at()
            except Exception:
                log.exception("delivery_scan_failed")
                nxt = None
            wait = 1.0 if nxt is None else min(1.0, max(0.02, nxt - time.time()))
            self._wake.wait(wait)
            self._wake.clear()

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def _deliver(self, item: Delivery) -> None:
        try:
            ok, error = self._post(item)
            tries = item.tries + 1
            retry_at = None
            if not ok and tries < self.tries and not error.startswith("unsupported"):
                retry_at = time.time() + self.backoff_s * 2 ** (tries - 1)
            self.store.delivery_done(item.id, ok, error, retry_at)
            bound = log.bind(submission_id=item.id, tries=tries)
            if ok:
                bound.debug("result_delivered")
            elif retry_at is None:
                bound.error("result_delivery_failed", error=error)
            else:
                bound.warning("result_delivery_retry", error=error)
        except Exception:
            log.exception("delivery_crashed", submission_id=item.id)
        finally:
            with self._lock:
                self._busy.discard(item.id)
            self._wake.set()

    def _post(self, item: Delivery) -> tuple[bool, str]:
        if urlparse(item.callback_url).scheme not in ("http", "https"):
            return False, "unsupported callback URL scheme"
        try:
            r = self._session().post(item.callback_url, timeout=(5.0, self.timeout_s),
                                     data={"xqueue_header": item.header, "xqueue_body": item.result},
                                     allow_redirects=False)
        except requests.RequestException as exc:
            return False, f"{type(exc).__name__}: {str(exc)[:200]}"
        if 200 <= r.status_code < 300:
            return True, ""
        return False, f"HTTP {r.status_code}"
