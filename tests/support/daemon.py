"""Fixtures for the daemon tests: a small legacy-xqueue server on loopback
(real HTTP, leases, per-pull keys) and a minimal client for it, so the pull
loop and its supervisor can be tested with real forked children and real
signals before (and independently of) the bundled queue server and client.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from xgrader.backends.base import Backend, SandboxError


@dataclass
class Entry:
    id: int
    queue: str
    body: str
    key: str = ""
    leased_until: float = 0.0
    pulls: int = 0
    results: list[dict] = field(default_factory=list)   # every put_result accepted
    rejected: int = 0
    delivered: list[dict] = field(default_factory=list)  # every body the LMS got (answered with 500 too)


class MiniXQueue:
    """Legacy xqueue semantics that matter to a grader: oldest unanswered,
    unleased submission first; a new key per pull; stale keys rejected with
    'Incorrect key for submission'; a second put with a valid key accepted
    (and recorded: tests assert exactly one)."""

    def __init__(self, lease_s: float = 60.0, port: int = 0) -> None:
        self.lease_s = lease_s
        self.lock = threading.Lock()
        self.entries: list[Entry] = []
        self.down = False  # answer 503 to everything (a dead queue server)
        # Other behaviours a test can switch on:
        self.queues: set[str] | None = None   # known queues (None: any); others are "not found"
        self.password: str | None = None      # None: any login succeeds
        self.login_refusal = "Incorrect login credentials"
        self.fail_puts = 0        # the next N valid put_results reach the LMS, then answer 500 (rolled back)
        self.same_key = False     # edx-submissions: a re-serve keeps the key, keys are UUIDs
        self.no_queuelen = False  # edx-submissions: get_queuelen/ is a 404 page
        self.requests: list[str] = []   # every request path (without the query)
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/xqueue/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "MiniXQueue":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def restart(self, down_s: float) -> None:
        """Stop listening for `down_s` seconds, then serve the same state on
        the same port (a queue server restart)."""
        port = self.server.server_address[1]
        self.stop()
        time.sleep(down_s)
        end = time.monotonic() + 10
        while True:  # forked grading children may still hold the old listening fd
            try:
                self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
                break
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def submit(self, queue: str, body: dict | str, raw_content: str | None = None) -> Entry:
        with self.lock:
            entry = Entry(id=len(self.entries) + 1, queue=queue,
                          body=body if isinstance(body, str) else json.dumps(body))
            entry.raw_content = raw_content  # type: ignore[attr-defined]
            self.entries.append(entry)
            return entry

    def answered(self) -> int:
        with self.lock:
            return sum(1 for e in self.entries if e.results)

    # -- HTTP ----------------------------------------------------------------
    def _get_submission(self, queue: str) -> tuple[int, Any]:
        now = time.monotonic()
        if self.queues is not None and queue not in self.queues:
            return 1, f"Queue '{queue}' not found"
        with self.lock:
            for e in self.entries:
                if e.queue == queue and not e.results and e.leased_until <= now:
                    if not (self.same_key and e.key):
                        e.key = str(uuid.uuid4()) if self.same_key else secrets.token_hex(16)
                    e.leased_until = now + self.lease_s
                    e.pulls += 1
                    header = json.dumps({"submission_id": e.id, "submission_key": e.key})
                    content = getattr(e, "raw_content", None)
                    if content is not None:
                        return 0, content.replace("@KEY@", e.key)
                    return 0, json.dumps({"xqueue_header": header, "xqueue_body": e.body,
                                          "xqueue_files": "{}"})
        return 1, f"Queue '{queue}' is empty"

    def _put_result(self, form: dict[str, str]) -> tuple[int, str]:
        try:
            header = json.loads(form["xqueue_header"])
            body = json.loads(form["xqueue_body"])
            sid, key = int(header["submission_id"]), header["submission_key"]
        except (KeyError, ValueError, TypeError):
            return 1, "Incorrect reply format"
        with self.lock:
            for e in self.entries:
                if e.id == sid:
                    if key != e.key:
                        e.rejected += 1
                        return 1, "Incorrect key for submission"
                    e.delivered.append(body)
                    if self.fail_puts > 0:   # told the LMS, then failed: not answered, served again
                        self.fail_puts -= 1
                        return 500, ""
                    e.results.append(body)
                    return 0, ""
        return 1, "Submission does not exist"

    def _handler(self):
        mini = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, code: int, content: Any) -> None:
                if mini.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                if code >= 400:   # a server error page, not an xqueue reply
                    self._page(code)
                    return
                data = json.dumps({"return_code": code, "content": content}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _page(self, code: int) -> None:
                data = f"<html><h1>{code}</h1></html>".encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                with mini.lock:
                    mini.requests.append(url.path)
                qs = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path.endswith("/get_submission/"):
                    self._reply(*mini._get_submission(qs.get("queue_name", "")))
                elif url.path.endswith("/get_queuelen/"):
                    if mini.no_queuelen:
                        self._page(404)
                        return
                    queue = qs.get("queue_name")
                    if mini.queues is not None and queue not in mini.queues:
                        self._reply(1, "Valid queue names are: " + ", ".join(sorted(mini.queues)))
                        return
                    with mini.lock:
                        n = sum(1 for e in mini.entries if e.queue == queue and not e.results)
                    self._reply(0, n)
                else:
                    self._reply(1, "login_required")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                with mini.lock:
                    mini.requests.append(self.path)
                if self.path.endswith("/login/"):
                    if mini.password is not None and form.get("password") != mini.password:
                        self._reply(1, mini.login_refusal)
                        return
                    self._reply(0, "Logged in")
                elif self.path.endswith("/put_result/"):
                    self._reply(*mini._put_result(form))
                else:
                    self._reply(1, "login_required")

        return Handler


@dataclass(frozen=True)
class PutOutcome:
    accepted: bool
    foreign_key: bool = False
    rejected: bool = False
    message: str = ""


class MiniClient:
    """Just enough of XQueueClient's surface for MiniXQueue (real HTTP)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def _envelope(self, resp: requests.Response) -> tuple[int, Any]:
        resp.raise_for_status()
        data = json.loads(resp.text)
        return data["return_code"], data["content"]

    def login(self) -> None:
        code, content = self._envelope(self.session.post(self.url + "login/", data={"username": "u", "password": "p"}, timeout=5))
        if code != 0:
            raise RuntimeError(content)

    def get_submission(self, queue: str) -> str | None:
        code, content = self._envelope(self.session.get(self.url + "get_submission/", params={"queue_name": queue}, timeout=5))
        return content if code == 0 else None

    def get_queuelen(self, queue: str) -> int:
        return int(self._envelope(self.session.get(self.url + "get_queuelen/", params={"queue_name": queue}, timeout=5))[1])

    def put_result(self, header_raw: str, reply: Any) -> PutOutcome:
        code, content = self._envelope(self.session.post(
            self.url + "put_result/", data={"xqueue_header": header_raw, "xqueue_body": reply.to_body()}, timeout=30))
        if code == 0:
            return PutOutcome(accepted=True)
        if content == "Incorrect key for submission":
            return PutOutcome(accepted=False, foreign_key=True, message=content)
        return PutOutcome(accepted=False, rejected=True, message=content)

    def fetch_files(self, files: dict[str, str]) -> dict[str, bytes]:
        return {name: self.session.get(url, timeout=5).content for name, url in files.items()}


class NoSandbox(Backend):
    """The supervisor tests inject job functions that never start a sandbox;
    this records the daemon's cleanup calls so the tests can assert them."""

    name = "none"

    def __init__(self) -> None:
        self.killed_labels: list[str] = []
        self.cleanups = 0

    def start(self, job):  # pragma: no cover - never called by these tests
        raise SandboxError("no sandbox in daemon unit tests")

    def cleanup_stale(self) -> None:
        self.cleanups += 1

    def kill_label(self, label: str) -> None:
        self.killed_labels.append(label)


def stop_when(predicate: Callable[[], bool], timeout: float, sig: int = signal.SIGTERM) -> threading.Event:
    """Send `sig` to this process once `predicate()` holds (or at `timeout`),
    unless the returned event is set first (the daemon already returned: a
    late SIGTERM would kill the test run itself)."""
    cancel = threading.Event()

    def watch() -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not predicate():
            if cancel.wait(0.02):
                return
        if not cancel.is_set():
            os.kill(os.getpid(), sig)

    threading.Thread(target=watch, daemon=True).start()
    return cancel


@pytest.fixture
def mini_xqueue():
    server = MiniXQueue().start()
    yield server
    server.stop()
