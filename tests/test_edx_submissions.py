"""`xgrader run` against a real edx-submissions 4.x server (Django on SQLite,
tests/support/edx.py), grading real submissions in bwrap sandboxes:

- grades recorded right for points-possible 1 and N (the score goes as a
  fraction there; the choice is logged);
- no polling storm without get_queuelen/ (asked once) and no client errors;
- a submission served again with the same key while it is being graded is
  graded once;
- a wrong password, and a user outside the `xqueue` group: not ready at
  once, then exit 3 with one error line;
- a server restart in the middle: every submission graded once, right.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.support.edx import GRADER, NOT_IN_GROUP, EdxServer, free_port
from tests.support.grading import write_assignment
from tests.test_ops_daemon import ADD

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SLOW_ADD = {
    "assignment.toml": """
        title = "Slow add"
        max_points = 1
        kind = "io"
        functions = ["add"]
        test_timeout_s = 8.0
    """,
    "tests/cases.toml": """
        [[case]]
        expr = "add(1, 2)"
        visible = true
    """,
    "solution/submission.py": "def add(a, b):\n    return a + b\n",
}
CORRECT = "def add(a, b):\n    return a + b\n"
PARTIAL = "def add(a, b):\n    return a + b if a < 1000 else 0\n"   # 2 of 3 cases
WRONG = "def add(a, b):\n    return a - b\n"
SLOW = "import time\n\ndef add(a, b):\n    time.sleep(3)\n    return a + b\n"


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    root = tmp_path_factory.mktemp("edx-handlers")
    write_assignment(root, "add", ADD)
    write_assignment(root, "slow_add", SLOW_ADD)
    return root


class Daemon:
    """`python -m xgrader run` with a metrics port and a JSON log."""

    def __init__(self, tmp: Path, server: EdxServer, handlers: Path, queue: str, *,
                 user: tuple[str, str] = GRADER, **env: str) -> None:
        self.port = free_port()
        self.log = tmp / f"daemon-{queue}-{user[0]}.log"
        full = {k: v for k, v in os.environ.items() if not k.startswith("XGRADER_")}
        full.update({
            "XGRADER_QUEUE_URL": server.url, "XGRADER_QUEUE_NAMES": queue, "XGRADER_QUEUE_USER": user[0],
            "XGRADER_QUEUE_PASSWORD": user[1], "XGRADER_HANDLERS": str(handlers), "XGRADER_SANDBOX": "bwrap",
            "XGRADER_METRICS_PORT": str(self.port), "XGRADER_LOG_FORMAT": "json",
            "XDG_CACHE_HOME": str(tmp / "cache"), **env})
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "xgrader", "run"], env=full, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def events(self, name: str) -> list[dict]:
        return [line for line in self.lines() if line["event"] == name]

    def get(self, path: str) -> requests.Response | None:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=3)
        except requests.ConnectionError:
            return None

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in self.get("/metrics").text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def wait(self, predicate, timeout: float, what: str):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = predicate()
            if value:
                return value
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}: {self.tail()}"
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}: {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text()[-4000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def edx(tmp_path_factory):
    server = EdxServer(tmp_path_factory.mktemp("edx"))
    yield server
    server.stop()


def all_retired(edx: EdxServer, ids: list[int]):
    states = [edx.state(i) for i in ids]
    return all(s["status"] == "retired" for s in states) and states


def test_grades_are_recorded_right_for_one_and_n_points_without_a_polling_storm(edx, handlers, tmp_path):
    plan = [(CORRECT, 1, [1, 1]), (PARTIAL, 1, [1, 1]), (WRONG, 1, [0, 1]),
            (CORRECT, 6, [6, 6]), (PARTIAL, 6, [4, 6]), (WRONG, 6, [0, 6])]
    ids = [edx.create("grades", code, "add", points, student=f"s{n}") for n, (code, points, _) in enumerate(plan)]
    daemon = Daemon(tmp_path, edx, handlers, "grades")
    try:
        states = daemon.wait(lambda: all_retired(edx, ids), 120, "every submission retired")
        # What the LMS records: round(fraction x points_possible), once each.
        assert [s["scores"] for s in states] == [[expected] for _, _, expected in plan]
        replies = [json.loads(s["reply"]) for s in states]
        assert [r["correct"] for r in replies] == [True, False, False, True, False, False]
        assert replies[1]["score"] == pytest.approx(2 / 3) and replies[0]["score"] == 1
        (chosen,) = daemon.events("score_format")
        assert chosen["score_format"] == "fraction" and "UUID" in chosen["reason"]
        assert daemon.get("/readyz").status_code == 200
        # Idle for a while: get_queuelen/ (a 404 here) was asked once; the
        # empty queue is polled with backoff (<= XGRADER_POLL_MAX_S apart).
        before = len(edx.requests_to("get_submission/", "grades"))
        time.sleep(8)
        idle_pulls = len(edx.requests_to("get_submission/", "grades")) - before
        m = daemon.metrics()
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()
    assert len(edx.requests_to("get_queuelen/", "grades")) == 1
    assert idle_pulls <= 16, idle_pulls   # backoff from 0.05 s to 5 s: a handful, not a storm
    assert not any(k.startswith("xgrader_queue_client_errors_total") for k in m), \
        {k: v for k, v in m.items() if "client_errors" in k}
    assert not any(k.startswith("xgrader_queue_length") for k in m)
    assert m['xgrader_slots{queue="grades"}'] == 2 and m['xgrader_slot_busy_seconds_total{queue="grades"}'] > 0
    assert m['xgrader_pulls_total{queue="grades",result="work"}'] == len(ids)
    assert m['xgrader_queue_served{queue="grades"}'] == 1
    assert len(daemon.events("queue_length_unsupported")) == 1
    assert len(edx.requests_to("put_result/")) >= len(ids)


def test_same_key_served_again_while_grading_is_graded_once(edx, handlers, tmp_path):
    sid = edx.create("slow", SLOW, "slow_add", 5)
    daemon = Daemon(tmp_path, edx, handlers, "slow")
    try:
        daemon.wait(lambda: edx.state(sid)["status"] == "pulled", 60, "the pull")
        key = edx.state(sid)["pullkey"]
        edx.age(sid)   # its 5-minute lease is over: edx-submissions serves it again, same key
        again = daemon.wait(lambda: daemon.events("served_again_while_grading"), 30, "the re-serve")
        assert again[0]["submission_id"] == str(sid) and again[0]["new_key"] is False
        state = daemon.wait(lambda: (s := edx.state(sid))["status"] == "retired" and s, 60, "retired")
        m = daemon.metrics()
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()
    assert state["scores"] == [[5, 5]] and state["pullkey"] == key and state["num_failures"] == 0
    assert [e["submission_id"] for e in daemon.events("graded")] == [str(sid)]       # graded once
    assert m['xgrader_pulls_total{queue="slow",result="in_flight"}'] >= 1
    assert m['xgrader_submissions_pulled_total{queue="slow"}'] == 1
    assert not any(k.startswith("xgrader_infra_failures_total") for k in m)


@pytest.mark.parametrize("user, reason", [
    ((GRADER[0], "wrong-password"), "Incorrect login credentials"),
    (NOT_IN_GROUP, "the user must be in the 'xqueue' group"),
])
def test_refused_login_is_not_ready_then_exits_3(edx, handlers, tmp_path, user, reason):
    sid = edx.create("refused", CORRECT, "add", 1, student=user[0])
    daemon = Daemon(tmp_path, edx, handlers, "refused", user=user, XGRADER_LOGIN_MAX_REFUSALS="2")
    try:
        ready = daemon.wait(lambda: (r := daemon.get("/readyz")) is not None and reason in r.text and [r],
                            30, "readyz naming the login")[0]
        assert ready.status_code == 503 and reason in ready.json()["detail"], ready.text
        code = daemon.proc.wait(timeout=60)
    finally:
        daemon.stop()
    assert code == 3, daemon.tail()
    errors = [e for e in daemon.lines() if e["level"] in ("error", "critical")]
    assert [e["event"] for e in errors] == ["login_refused_giving_up"] and reason in errors[0]["error"]
    assert user[1] not in daemon.log.read_text()
    assert edx.state(sid)["status"] == "pending"


def test_server_restart_mid_run(edx, handlers, tmp_path):
    first = [edx.create("restart", code, "add", 3, student=f"a{n}") for n, code in enumerate([CORRECT, WRONG])]
    daemon = Daemon(tmp_path, edx, handlers, "restart", XGRADER_POLL_MAX_S="1")
    try:
        daemon.wait(lambda: all_retired(edx, first), 120, "the first submissions")
        edx.restart(down_s=2.0)
        second = [edx.create("restart", code, "add", 3, student=f"b{n}") for n, code in enumerate([PARTIAL, CORRECT])]
        states = daemon.wait(lambda: all_retired(edx, first + second), 120, "the rest after the restart")
        assert daemon.get("/readyz").status_code == 200
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()
    assert [s["scores"] for s in states] == [[[3, 3]], [[0, 3]], [[2, 3]], [[3, 3]]]
    assert daemon.events("pull_failed")   # it did see the server gone
