"""Push mode on real HTTP (127.0.0.1) and real bwrap sandboxes: grading,
files by URL, malformed bodies, the busy answer, the deadline, the metrics,
and the `xgrader serve-push` command itself."""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from xgrader.config import Settings
from xgrader.push import PushServer, parse_push
from xgrader.backends import make_backend
from xgrader.wire import PayloadError
from tests.support.grading import write_assignment
from tests.support.procs import marker, pgrep

ADD = {
    "assignment.toml": """
        title = "Add"
        max_points = 3
        kind = "io"
        functions = ["add"]
        test_timeout_s = 2.0
        [limits]
        wall_s = 20
    """,
    "tests/cases.toml": """
        [[case]]
        expr = "add(1, 2)"
        visible = true
        [[case]]
        expr = "add(-5, 5)"
        [[case]]
        expr = "add(10**6, 1)"
    """,
    "solution/submission.py": "def add(a, b):\n    return a + b\n",
}
CORRECT = "def add(a, b):\n    return a + b\n"


def body(code: str, grader: str = "add", files: dict | None = None) -> bytes:
    lms = {"student_response": code, "grader_payload": json.dumps({"grader": grader}),
           "student_info": json.dumps({"anonymous_student_id": "s1"})}
    return json.dumps({"xqueue_body": json.dumps(lms), "xqueue_files": json.dumps(files or {})}).encode()


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    root = tmp_path_factory.mktemp("push-handlers")
    write_assignment(root, "add", ADD)
    return root


@pytest.fixture(scope="module")
def env_cache(tmp_path_factory):
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


def start(settings: Settings, **kw) -> tuple[PushServer, str, threading.Thread]:
    backend = make_backend(settings)
    server = PushServer(settings, backend, **kw)
    ready = threading.Event()
    thread = threading.Thread(target=server.serve, args=("127.0.0.1", 0, ready), daemon=True)
    thread.start()
    assert ready.wait(30)
    return server, f"http://127.0.0.1:{server.port}", thread


@pytest.fixture(scope="module")
def push(handlers, env_cache):
    # file_hosts: the test's file server is on loopback, refused unless listed.
    server, url, thread = start(Settings(handlers=handlers, sandbox="bwrap", concurrency=2,
                                         file_hosts=["127.0.0.1"]))
    yield server, url
    server.shutdown()
    thread.join(10)
    server.backend.close()


def post(url: str, data: bytes, timeout: float = 40) -> requests.Response:
    # xqueue sends no content type
    return requests.post(url + "/", data=data, headers={"Content-Type": ""}, timeout=timeout)


def test_correct_and_wrong_submissions_are_graded(push):
    server, url = push
    r = post(url, body(CORRECT))
    assert r.status_code == 200
    reply = r.json()
    assert reply["correct"] is True and reply["score"] == 3 and reply["msg"].startswith("<")
    r = post(url, body("def add(a, b):\n    return a - b\n"))
    reply = r.json()
    assert r.status_code == 200 and reply["correct"] is False and reply["score"] < 3


def test_metrics_move_and_health_on_the_push_port(push):
    server, url = push
    before = requests.get(url + "/metrics", timeout=5).text
    assert post(url, body(CORRECT)).json()["correct"] is True
    text = requests.get(url + "/metrics", timeout=5).text

    def value(text: str, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    graded = 'xgrader_submissions_graded_total{assignment="add",outcome="passed",queue="push"}'
    assert value(text, graded) == value(before, graded) + 1
    for phase in ("sandbox_start", "run", "grade"):
        key = f'xgrader_phase_seconds_count{{phase="{phase}",queue="push"}}'
        assert value(text, key) > value(before, key), phase
    assert value(text, 'xgrader_push_requests_total{status="200"}') >= 1
    assert requests.get(url + "/healthz", timeout=5).status_code == 200
    end = time.monotonic() + 20  # the first backend check runs in a thread at start
    while requests.get(url + "/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < end
        time.sleep(0.1)


def test_files_are_fetched_by_url(push):
    server, url = push

    class Files(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            data = CORRECT.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    files_srv = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=files_srv.serve_forever, daemon=True).start()
    try:
        file_url = f"http://127.0.0.1:{files_srv.server_address[1]}/f/abc"
        r = post(url, body("", files={"submission.py": file_url}))
        assert r.status_code == 200 and r.json()["correct"] is True
    finally:
        files_srv.shutdown()
        files_srv.server_close()


@pytest.mark.parametrize("raw, needle", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"xqueue_files": "{}"}', "xqueue_body"),
])
def test_malformed_outer_body_gets_a_clear_400(push, raw, needle):
    server, url = push
    r = post(url, raw)
    assert r.status_code == 400 and needle in r.json()["error"]


def test_malformed_inner_layer_is_answered_like_the_daemon(push):
    server, url = push
    bad = json.dumps({"xqueue_body": json.dumps({"student_response": "x", "grader_payload": "{oops"}),
                      "xqueue_files": "{}"}).encode()
    r = post(url, bad)
    assert r.status_code == 200
    reply = r.json()
    assert reply["correct"] is False and reply["score"] == 0 and "grader_payload" in reply["msg"]
    r = post(url, body(CORRECT, grader="../../etc/passwd"))
    assert r.status_code == 200 and r.json()["correct"] is False
    r = post(url, body("", files={"../evil.py": "http://127.0.0.1:9/x"}))  # checked before any fetch
    assert r.status_code == 200 and r.json()["correct"] is False and "bad file name" in r.json()["msg"]


def test_parse_push_names_the_layer():
    with pytest.raises(PayloadError) as exc:
        parse_push(json.dumps({"xqueue_body": "{}", "xqueue_files": "[1]"}).encode(), "push-1")
    assert exc.value.layer in ("grader_payload", "xqueue_files")
    sub = parse_push(body(CORRECT), "push-2")
    assert sub.payload.grader == "add" and sub.submission_id == "push-2"


def test_deadline_gets_could_not_grade_and_a_request_meanwhile_waits_for_the_slot(handlers, env_cache):
    """One slot, a 2 s deadline: a submission that starts a grandchild and
    sleeps at import (the assignment allows 20 s wall) is killed at the
    deadline with everything it started, and answered with xqueue's
    could-not-grade body; a request arriving meanwhile waits for the slot
    (xqueue would not retry a 503) and is graded right after."""
    settings = Settings(handlers=handlers, sandbox="bwrap", concurrency=1)
    server, url, thread = start(settings, deadline_s=2.0)
    mark = marker(threading.get_ident())
    code = f"import subprocess, time\nsubprocess.Popen({mark.split()!r})\ntime.sleep(15)\n" + CORRECT
    try:
        # Expected values first (computing them runs the reference solution in
        # a sandbox): the 2 s deadline is then the slow submission's alone.
        assert post(url, body(CORRECT)).json()["correct"] is True
        slow: dict = {}

        def first():
            slow["resp"] = post(url, body(code))
            slow["done"] = time.monotonic()

        t = threading.Thread(target=first)
        started = time.monotonic()
        t.start()
        end = time.monotonic() + 10
        while not pgrep(mark):  # the grandchild runs: the slot is taken
            assert time.monotonic() < end and t.is_alive()
            time.sleep(0.05)
        assert server._in_flight == 1
        r = post(url, body(CORRECT))
        answered = time.monotonic()
        assert r.status_code == 200 and r.json()["correct"] is True and r.json()["score"] == 3
        t.join(30)
        assert answered > slow["done"]  # it was graded once the slow one's slot was free
        elapsed = time.monotonic() - started
        reply = slow["resp"].json()
        assert slow["resp"].status_code == 200 and reply["correct"] is None
        assert "could not be graded" in reply["msg"]
        assert elapsed < 10, elapsed
        # nothing the killed request started is left running
        end = time.monotonic() + 5
        while pgrep(mark):
            assert time.monotonic() < end, "the sandbox's grandchild outlived the deadline kill"
            time.sleep(0.1)
        text = requests.get(url + "/metrics", timeout=5).text
        assert 'xgrader_infra_failures_total{kind="timeout",queue="push"} 1.0' in text
        assert 'xgrader_push_requests_total{status="200"} 3.0' in text and 'status="503"' not in text
        assert 'xgrader_in_flight{queue="push"} 0.0' in text
    finally:
        server.shutdown()
        thread.join(10)
        server.backend.close()


def test_busy_answers_503_only_when_no_slot_frees_within_the_budget(push, monkeypatch):
    """Every slot taken (here by the test itself): a push waits while it
    could still be graded within the budget, then gets 503; a slot freed
    while it waits is taken and the request graded."""
    server, url = push
    monkeypatch.setattr(server, "budget_s", 4.0)  # with the 2 s minimum grading time: up to 2 s of waiting
    monkeypatch.setattr(server, "deadline_s", 2.0)
    held = [server.slots.acquire(timeout=30) for _ in range(server.settings.concurrency)]
    try:
        assert all(held)
        started = time.monotonic()
        r = post(url, body(CORRECT))
        waited = time.monotonic() - started
        assert r.status_code == 503 and "busy" in r.json()["error"]
        assert 1.8 < waited < 4.0, waited
        graded: dict = {}
        t = threading.Thread(target=lambda: graded.setdefault("r", post(url, body(CORRECT))))
        t.start()
        end = time.monotonic() + 10
        while server.waiting != 1:  # the request waits for a slot
            assert time.monotonic() < end and t.is_alive()
            time.sleep(0.01)
        server.slots.release()
        held.pop()
        t.join(30)
        assert graded["r"].status_code == 200 and graded["r"].json()["correct"] is True
    finally:
        for _ in held:
            server.slots.release()


def test_serve_push_command(handlers, tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), XGRADER_LOG_FORMAT="json")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "xgrader", "serve-push", "--host", "127.0.0.1", "--port", str(port),
         "--handlers", str(handlers), "--sandbox", "bwrap"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 30
        while True:
            try:
                if requests.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < end
            time.sleep(0.1)
        r = post(url, body(CORRECT))
        assert r.status_code == 200 and r.json()["score"] == 3
        # SIGTERM while a request is being graded: it still gets its answer.
        slow: dict = {}
        mark = marker(threading.get_ident() + 1)
        code = f"import subprocess, time\nsubprocess.Popen({mark.split()!r})\ntime.sleep(1.5)\n" + CORRECT
        t = threading.Thread(target=lambda: slow.setdefault("r", post(url, body(code))))
        t.start()
        end = time.monotonic() + 20
        while not pgrep(mark):  # the submission's code runs: it is being graded
            assert time.monotonic() < end and t.is_alive()
            time.sleep(0.02)
        proc.terminate()
        t.join(30)
        assert slow["r"].status_code == 200 and slow["r"].json()["score"] == 3
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err[-2000:]
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    graded = [line for line in lines if line.get("event") == "push_graded"]
    assert graded and graded[0]["queue"] == "push" and graded[0]["submission_id"].startswith("push-")
    assert graded[0]["assignment"] == "add"


def test_push_children_grade_through_the_servers_fork_servers(push, monkeypatch):
    """The push server starts bwrap's fork servers before it forks a child,
    as the daemon does: a job's sandbox is forked by them, not started cold."""
    import xgrader.backends.bwrap as bwrap_mod

    server, url = push
    servers = server.backend.forkservers.servers[("-I", "-S")]
    before = servers.pids()
    assert len(before) == 4  # started at serve(), before any request

    def no_cold_start(*a, **kw):
        raise RuntimeError("a cold bwrap start in a push child")
    monkeypatch.setattr(bwrap_mod, "_launcher", no_cold_start)  # children are forked after this
    reply = post(url, body(CORRECT)).json()
    assert reply["correct"] is True, reply
    assert servers.pids() == before  # the same servers, not restarted
    assert server.cache is not None and "add" in server.cache.registry.names()
