"""Fixtures for the queue tests: the bundled queue server in-process on a
free loopback port (real HTTP, real SQLite), a real LMS callback receiver,
LMS-side submits and clients configured for the server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs

import pytest
import requests

from xgrader.client import XQueueClient
from xgrader.config import Settings
from xgrader.hooks import Hooks
from xgrader.queue_server import QueueServer, QueueServerConfig

GRADER = ("grader", "grader-pw")
LMS = ("lms", "lms-pw")
QUEUES = ["q1", "q2"]


class Receiver:
    """The LMS side of callbacks: records every POST; answers `fail_first`
    requests with 500 (or `status` forever) to exercise delivery retries."""

    def __init__(self, fail_first: int = 0, status: int = 200) -> None:
        self.posts: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.fail_first = fail_first
        self.status = status
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                with receiver.lock:
                    if receiver.fail_first > 0:
                        receiver.fail_first -= 1
                        code = 500
                    else:
                        code = receiver.status
                        if code == 200:
                            receiver.posts.append({k: v[0] for k, v in parse_qs(raw).items()})
                            receiver.paths.append(self.path)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cb/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 10.0) -> list[dict[str, str]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if len(self.posts) >= n:
                    break
            time.sleep(0.02)
        with self.lock:
            return list(self.posts)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class CountingHooks(Hooks):
    def __init__(self) -> None:
        self.relogins = 0
        self.errors: list[str] = []
        self.logged_in: list[bool] = []

    def on_relogin(self) -> None:
        self.relogins += 1

    def on_client_error(self, kind: str) -> None:
        self.errors.append(kind)

    def on_logged_in(self, ok: bool) -> None:
        self.logged_in.append(ok)


class QueueHarness:
    """Start, stop and restart the bundled server on one database and port."""

    def __init__(self, tmp: Path, **config: Any) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.config = QueueServerConfig(
            host="127.0.0.1", port=0, db=tmp / "queue.db", queues=QUEUES,
            users={GRADER[0]: GRADER[1], LMS[0]: LMS[1]}, delivery_backoff_s=0.05, **config)
        self.server = QueueServer(self.config).start()
        self.config = self.config.model_copy(update={"port": self.server.port})
        self.url = self.server.url
        self.lms = requests.Session()
        self.lms_login()

    @property
    def app(self):
        return self.server.app

    @property
    def store(self):
        return self.server.store

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def restart(self) -> None:
        self.stop()
        end = time.monotonic() + 10
        while True:
            try:
                self.server = QueueServer(self.config).start()
                return
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)

    def lms_login(self) -> None:
        self.lms.get(self.url + "login/", timeout=5)
        r = self.lms.post(self.url + "login/", data={"username": LMS[0], "password": LMS[1]},
                          headers=csrf_headers(self.lms, self.url), timeout=5)
        assert json.loads(r.text) == {"return_code": 0, "content": "Logged in"}

    def submit(self, queue: str = "q1", *, key: str = "k", callback: str | None = None,
               response: str = "print(1)", payload: str = '{"grader": "hello"}',
               files: dict[str, bytes] | None = None) -> dict:
        header = {"lms_callback_url": callback or f"http://127.0.0.1:9/unused/{key}", "lms_key": key,
                  "queue_name": queue}
        body = {"student_response": response, "grader_payload": payload,
                "student_info": json.dumps({"anonymous_student_id": "s1", "submission_time": "20261122161500"})}
        multipart = {n: (n, data) for n, data in files.items()} if files else None
        r = self.lms.post(self.url + "submit/", timeout=10, headers=csrf_headers(self.lms, self.url),
                          data={"xqueue_header": json.dumps(header), "xqueue_body": json.dumps(body)},
                          files=multipart)
        reply = json.loads(r.text)
        assert reply["return_code"] == 0, reply
        return {"id": int(r.headers["X-Xgrader-Submission-Id"]), "header": header, "body": body}

    def client(self, hooks: Hooks | None = None, **settings: Any) -> XQueueClient:
        return make_client(self.url, hooks, **settings)

    def row(self, sid: int) -> dict:
        with self.store.conn() as c:
            c.row_factory = None
            cur = c.execute("SELECT * FROM submissions WHERE id=?", (sid,))
            names = [d[0] for d in cur.description]
            return dict(zip(names, cur.fetchone()))


def make_client(url: str, hooks: Hooks | None = None, **settings: Any) -> XQueueClient:
    values = {"queue_url": url, "queue_user": GRADER[0], "queue_password": GRADER[1], "queue_names": QUEUES,
              **settings}
    return XQueueClient(Settings(**values), hooks=hooks)


def csrf_headers(session: requests.Session, url: str) -> dict[str, str]:
    token = session.cookies.get("csrftoken")
    return {"X-CSRFToken": token, "Referer": url} if token else {"Referer": url}


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def make_queue(tmp_path):
    made: list[QueueHarness] = []

    def make(**config: Any) -> QueueHarness:
        h = QueueHarness(tmp_path / f"q{len(made)}", **config) if made else QueueHarness(tmp_path, **config)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


@pytest.fixture
def queue(make_queue) -> QueueHarness:
    return make_queue()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()
