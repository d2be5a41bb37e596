"""Hints through the whole daemon: `xgrader queue serve` and `xgrader run`
as subprocesses (bwrap sandbox, one forked child per submission), the fake
Chat Completions server, the SQLite hint store shared by the children."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import requests

from tests.support.fake_llm import Reply
from tests.support.grading import write_assignment
from tests.test_hints import CANARIES, KEY_CANARY, SOLUTION, WRONG
from xgrader.daemon.demo_harness import QUEUE, CallbackReceiver, DemoRun, free_port, login, wait_http
from xgrader.feedback import HINT_LABEL
from xgrader.hints.store import open_store

pytestmark = pytest.mark.slow

HINT = "Your loop adds something for each number, but is it the square of that number?"


def _submit(session, url, key, callback, code, payload, student):
    header = {"lms_callback_url": callback + key, "lms_key": key, "queue_name": QUEUE}
    body = {"student_response": code, "grader_payload": json.dumps(payload),
            "student_info": json.dumps({"anonymous_student_id": student})}
    reply = session.post(url + "submit/", data={"xqueue_header": json.dumps(header),
                                                "xqueue_body": json.dumps(body)}, timeout=10).json()
    assert reply["return_code"] == 0, reply


def test_daemon_posts_grades_with_hints_and_audits_them(tmp_path, fake_llm):
    fake_llm.default = Reply.hint(HINT)
    handlers = tmp_path / "handlers"
    write_assignment(handlers, "squares", {
        "assignment.toml": 'title = "Sum of squares"\nkind = "io"\nmax_points = 2\n[hints]\nenabled = true\n',
        "description.md": "Write square_sum(xs): the sum of the squares of xs.\n",
        "tests/cases.toml": '[[case]]\nexpr = "square_sum([1, 2])"\nvisible = true\n'
                            '[[case]]\nexpr = "square_sum([31337])"\n',
        "solution/submission.py": SOLUTION,
    })
    store_url = f"sqlite:///{tmp_path / 'hints.db'}"
    run = DemoRun(handlers=handlers, workdir=tmp_path, out=sys.stderr)
    password = "pw-" + os.urandom(6).hex()
    port = free_port()
    url = f"http://127.0.0.1:{port}/xqueue/"
    receiver = CallbackReceiver()
    metrics_port = free_port()
    queue = run.start_queue(port, password)
    daemon = None
    try:
        wait_http(url + "status/", 30, queue)
        session = requests.Session()
        login(session, url, "xgrader", password)
        env = {k: v for k, v in os.environ.items() if not k.startswith("XGRADER_")}
        env.update({
            "XGRADER_QUEUE_URL": url, "XGRADER_QUEUE_NAMES": QUEUE, "XGRADER_QUEUE_USER": "xgrader",
            "XGRADER_QUEUE_PASSWORD": password, "XGRADER_HANDLERS": str(handlers), "XGRADER_SANDBOX": "bwrap",
            "XGRADER_POLL_MAX_S": "0.3", "XGRADER_LOG_FORMAT": "json", "XGRADER_SHUTDOWN_GRACE_S": "10",
            "XGRADER_HINTS__ENABLED": "true", "XGRADER_HINTS__BASE_URL": fake_llm.url,
            "XGRADER_HINTS__MODEL": "fake-model", "XGRADER_HINTS__API_KEY": KEY_CANARY,
            "XGRADER_HINTS__STORE": store_url, "XGRADER_HINTS__BUDGET_S": "10",
            "XGRADER_METRICS_PORT": str(metrics_port),
        })
        log = open(tmp_path / "daemon.log", "wb")
        daemon = subprocess.Popen([sys.executable, "-m", "xgrader", "run"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        subs = {
            "wrong": (WRONG, {"grader": "squares"}, "anon-a"),
            "right": (SOLUTION, {"grader": "squares"}, "anon-b"),
            "plan": (WRONG + "\n# v2\nX = 1\n", {"grader": "squares", "hint": "planning"}, "anon-c"),
        }
        for key, (code, payload, student) in subs.items():
            _submit(session, url, key, receiver.url, code, payload, student)
        end = time.monotonic() + 120
        while time.monotonic() < end and receiver.count() < len(subs):
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(0.5)   # a duplicate would arrive now
        results = dict(receiver.results)
        # The children's on_hint calls reach the parent's /metrics.
        metrics = ""
        while time.monotonic() < end and 'xgrader_hints_total{outcome="delivered"} 2.0' not in metrics:
            metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            time.sleep(0.2)
    finally:
        for proc in (daemon, queue):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        receiver.stop()

    assert {k: len(v) for k, v in results.items()} == {"wrong": 1, "right": 1, "plan": 1}, results
    assert 'xgrader_hints_total{outcome="delivered"} 2.0' in metrics
    assert re.search(r"^xgrader_hint_tokens_total [1-9]", metrics, re.M)
    wrong, right, plan = results["wrong"][0], results["right"][0], results["plan"][0]
    assert wrong["correct"] is False and wrong["score"] == 0
    assert HINT_LABEL in wrong["msg"] and HINT in wrong["msg"]
    assert right["correct"] is True and right["score"] == 2 and HINT_LABEL not in right["msg"]
    assert plan["score"] == 0 and HINT in plan["msg"]
    for body in results.values():
        assert all(c not in body[0]["msg"] for c in CANARIES)
    # Two model calls (no hint for full marks), no canary in either prompt.
    assert len(fake_llm.requests) == 2
    sent = "\n".join(fake_llm.prompts())
    assert all(c not in sent for c in CANARIES)
    assert "Give a plan" in sent and "single most important bug" in sent
    # Each forked child audited its decision in the shared store.
    store = open_store(store_url)
    records = store.audit_list()
    assert sorted((r.student, r.outcome.value, r.hint_type.value) for r in records) == [
        ("anon-a", "delivered", "debugging"), ("anon-c", "delivered", "planning")]
    assert store.delivered("anon-a", "squares") == 1
