"""A running daemon, observed like an operator does: `xgrader run` as a
subprocess with a metrics port, against the bundled queue server (real HTTP,
real SQLite) grading real submissions in bwrap sandboxes. The test scrapes
/metrics, /healthz and /readyz and asserts the counters move as submissions
are graded; it also reads the daemon's JSON log lines: every line about a
submission names it, and no student code, output or secret appears."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.support.grading import write_assignment
from tests.support.queue import csrf_headers
from xgrader.queue_server import QueueServer, QueueServerConfig

SECRET_PW = "pw-CANARY-SECRET-7f3a9c"
SECRET_KEY = "sk-CANARY-LLMKEY-d41e02"
CODE_CANARY = "CODE-CANARY-91b2e7"
OUTPUT_CANARY = "OUTPUT-CANARY-55c1aa"
LMS = ("lms", "lms-pw")

ADD = {
    "assignment.toml": """
        title = "Add"
        max_points = 3
        kind = "io"
        functions = ["add"]
        test_timeout_s = 2.0
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
CORRECT = f"# {CODE_CANARY}\ndef add(a, b):\n    print('{OUTPUT_CANARY}')\n    return a + b\n"
WRONG = f"# {CODE_CANARY}\ndef add(a, b):\n    print('{OUTPUT_CANARY}')\n    return a - b\n"
SYNTAX = f"def add(a, b)\n    return '{CODE_CANARY}'\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lms:
    """The LMS side of the bundled queue: log in, submit like the LMS."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.get(url + "login/", timeout=5)
        r = self.session.post(url + "login/", data={"username": LMS[0], "password": LMS[1]},
                              headers=csrf_headers(self.session, url), timeout=5)
        assert json.loads(r.text)["return_code"] == 0

    def submit(self, response: str, grader: str = "add", files: dict[str, bytes] | None = None) -> int:
        key = os.urandom(4).hex()  # one callback per submission: the same one would retire earlier ones
        header = {"lms_callback_url": f"http://127.0.0.1:9/unused/{key}", "lms_key": key, "queue_name": "q1"}
        body = {"student_response": response, "grader_payload": json.dumps({"grader": grader}),
                "student_info": json.dumps({"anonymous_student_id": "s1"})}
        r = self.session.post(self.url + "submit/", timeout=10, headers=csrf_headers(self.session, self.url),
                              data={"xqueue_header": json.dumps(header), "xqueue_body": json.dumps(body)},
                              files={n: (n, d) for n, d in files.items()} if files else None)
        assert json.loads(r.text)["return_code"] == 0, r.text
        return int(r.headers["X-Xgrader-Submission-Id"])


@pytest.fixture
def queue_server(tmp_path):
    # Sessions last 3 s: the daemon must re-login while it works (counted).
    config = QueueServerConfig(host="127.0.0.1", port=0, db=tmp_path / "queue.db", queues=["q1"],
                               users={"grader": SECRET_PW, LMS[0]: LMS[1]}, delivery_tries=1,
                               delivery_backoff_s=0.05, session_ttl_s=3.0)
    server = QueueServer(config).start()
    yield server
    server.stop()


def start_daemon(tmp_path: Path, queue_url: str, password: str, metrics_port: int,
                 **extra_env: str) -> subprocess.Popen:
    handlers = tmp_path / "handlers"
    if not (handlers / "add").exists():
        write_assignment(handlers, "add", ADD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XGRADER_")}
    env.update({
        "XGRADER_QUEUE_URL": queue_url, "XGRADER_QUEUE_NAMES": "q1", "XGRADER_QUEUE_USER": "grader",
        "XGRADER_QUEUE_PASSWORD": password, "XGRADER_HINTS__API_KEY": SECRET_KEY,
        "XGRADER_HANDLERS": str(handlers), "XGRADER_SANDBOX": "bwrap", "XGRADER_CONCURRENCY": "2",
        "XGRADER_METRICS_PORT": str(metrics_port), "XGRADER_LOG_FORMAT": "json", "XGRADER_LOG_LEVEL": "info",
        "XGRADER_POLL_MAX_S": "0.5", "XDG_CACHE_HOME": str(tmp_path / "cache"),
    })
    env.update(extra_env)
    log = open(tmp_path / "daemon.log", "w")
    return subprocess.Popen([sys.executable, "-m", "xgrader", "run"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop_daemon(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=10)


def scrape(port: int) -> dict[str, float]:
    """Sample line (name{labels}) -> value."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def get(port: int, path: str) -> requests.Response | None:
    try:
        return requests.get(f"http://127.0.0.1:{port}{path}", timeout=3)
    except requests.ConnectionError:
        return None


def wait_for(predicate, timeout: float, proc: subprocess.Popen, what: str, log: Path):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, f"daemon exited {proc.returncode}: {log.read_text()[-3000:]}"
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}: {log.read_text()[-3000:]}")


def test_metrics_and_health_of_a_running_daemon(tmp_path, queue_server):
    lms = Lms(queue_server.url)
    # Waiting before the daemon starts: its first get_queuelen poll sees them.
    ids = [lms.submit(CORRECT), lms.submit(CORRECT), lms.submit(WRONG), lms.submit(SYNTAX),
           lms.submit(CORRECT, grader="no_such_assignment"),
           lms.submit("", files={"submission.py": CORRECT.encode()})]
    port = free_port()
    log = tmp_path / "daemon.log"
    proc = start_daemon(tmp_path, queue_server.url, SECRET_PW, port)
    try:
        first = wait_for(lambda: (m := _try_scrape(port)) and 'xgrader_queue_length{queue="q1"}' in m and m,
                         30, proc, "the first queue length", log)
        assert first['xgrader_queue_length{queue="q1"}'] == len(ids)

        def all_posted():
            m = scrape(port)
            return m.get('xgrader_results_posted_total{accepted="true",queue="q1",reason=""}', 0) >= len(ids) and m
        m = wait_for(all_posted, 120, proc, "all results posted", log)

        graded = {k: v for k, v in m.items() if k.startswith("xgrader_submissions_graded_total")}
        assert graded == {
            'xgrader_submissions_graded_total{assignment="add",outcome="passed",queue="q1"}': 3.0,
            'xgrader_submissions_graded_total{assignment="add",outcome="failed",queue="q1"}': 1.0,
            'xgrader_submissions_graded_total{assignment="add",outcome="syntax_error",queue="q1"}': 1.0,
            'xgrader_submissions_graded_total{assignment="no_such_assignment",outcome="error",queue="q1"}': 1.0,
        }, graded
        assert m['xgrader_submissions_pulled_total{queue="q1"}'] == len(ids)
        # Phases recorded in the forked children reached the parent's registry.
        phase = lambda p: m.get(f'xgrader_phase_seconds_count{{phase="{p}",queue="q1"}}', 0)  # noqa: E731
        assert phase("fetch") == len(ids) and phase("post") == len(ids) and phase("grade") == len(ids)
        assert phase("sandbox_start") >= 4 and phase("run") >= 4
        assert m['xgrader_grade_seconds_count{assignment="add",queue="q1"}'] == 5
        assert m['xgrader_in_flight{queue="q1"}'] == 0
        assert not any(k.startswith("xgrader_sandbox_failures_total") for k in m)
        assert any(k.startswith("xgrader_build_info{") for k in m)

        health, ready = get(port, "/healthz"), get(port, "/readyz")
        assert health.status_code == 200 and health.json()["ok"] is True
        assert ready.status_code == 200, ready.text

        # The queue agrees: every submission answered exactly once.
        with queue_server.store.conn() as c:
            rows = c.execute("SELECT state, puts FROM submissions ORDER BY id").fetchall()
        assert [tuple(r) for r in rows] == [("answered", 1)] * len(ids)
        # The queue-length gauge is re-polled (every 10 s) and drops to 0;
        # meanwhile the 3 s session expired and the client logged in again.
        m = wait_for(lambda: (s := scrape(port)).get('xgrader_queue_length{queue="q1"}') == 0 and s, 25, proc,
                     "queue length 0", log)
        assert m["xgrader_relogins_total"] >= 1
        assert get(port, "/readyz").status_code == 200
    finally:
        code = stop_daemon(proc)
    assert code == 0, log.read_text()[-3000:]

    text = log.read_text()
    for canary in (SECRET_PW, SECRET_KEY, CODE_CANARY, OUTPUT_CANARY):
        assert canary not in text, f"{canary} leaked into the daemon log"
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines and all("event" in line and "level" in line for line in lines)
    about = [line for line in lines if "submission_id" in line]
    assert about and all(line.get("queue") == "q1" for line in about), \
        [line for line in about if line.get("queue") != "q1"][:3]
    verdicts = [line for line in lines if line["event"] == "graded"]
    assert sorted(int(line["submission_id"]) for line in verdicts) == sorted(ids)
    assert all(line["assignment"] in ("add", "no_such_assignment") for line in verdicts)


def _try_scrape(port: int) -> dict[str, float] | None:
    try:
        return scrape(port)
    except requests.ConnectionError:
        return None


def test_a_refused_login_is_not_ready_at_once_then_exits_with_one_clear_line(tmp_path, queue_server):
    """Wrong password: /readyz says why at once; after the bounded number of
    refusals the daemon exits 3 with one error line (systemd and Kubernetes
    show it), never having pulled."""
    port = free_port()
    log = tmp_path / "daemon.log"
    proc = start_daemon(tmp_path, queue_server.url, "wrong-" + SECRET_PW, port, XGRADER_LOGIN_MAX_REFUSALS="3")
    try:
        ready = wait_for(lambda: (r := get(port, "/readyz")) is not None and "login" in r.text and [r], 30,
                         proc, "readyz naming the login", log)[0]
        assert ready.status_code == 503
        assert "Incorrect login credentials" in ready.json()["detail"], ready.text
        assert get(port, "/healthz").status_code == 200   # alive: it is still trying
        m = scrape(port)
        assert m['xgrader_queue_client_errors_total{kind="login"}'] >= 1
        assert m['xgrader_queue_served{queue="q1"}'] == 0
        code = proc.wait(timeout=40)   # refusals 5 s apart: about 10 s
    finally:
        stop_daemon(proc)
    assert code == 3, log.read_text()[-3000:]
    text = log.read_text()
    assert SECRET_PW not in text and SECRET_KEY not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    errors = [line for line in lines if line["level"] in ("error", "critical")]
    assert [e["event"] for e in errors] == ["login_refused_giving_up"], errors
    assert "refused the login 3 times" in errors[0]["error"] and "Incorrect login credentials" in errors[0]["error"]
    assert [line["event"] for line in lines].count("login_refused") == 3
    assert not any(line["event"] == "pull_failed" for line in lines)
