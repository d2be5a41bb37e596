"""The whole instructor loop in headless Chromium, JavaScript off, against
what users run: `xgrader queue serve` with the hint pages, `xgrader run`
grading in bwrap, the loopback Chat Completions server, an LMS callback
receiver.

A wrong submission gets a hint with a link; the student opens it, rates the
hint not helpful and asks the staff (a note with HTML in it); an instructor
logs into the dashboard, claims the request and answers; the student's page
shows the answer, the next feedback carries it, and the metrics and the
report show the rating."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.support.fake_llm import Reply
from tests.support.grading import write_assignment
from tests.test_hints import SOLUTION, WRONG
from xgrader.daemon.demo_harness import QUEUE, CallbackReceiver, free_port, login, wait_http
from xgrader.feedback import ANSWER_LABEL, HINT_LABEL

pytestmark = pytest.mark.slow

HINT = "Your loop adds something for each number, but is it the square of that number?"
SECRET = "e2e-link-secret-" + "k" * 32
NOTE = "I do multiply by 2, isn't that squaring? <script>alert('x')</script>"
ANSWER = "Squaring x means x * x (x times itself); x * 2 doubles it. Try [3] by hand."


def _submit(session, url, key, callback, code, student):
    header = {"lms_callback_url": callback + key, "lms_key": key, "queue_name": QUEUE}
    body = {"student_response": code, "grader_payload": json.dumps({"grader": "squares"}),
            "student_info": json.dumps({"anonymous_student_id": student})}
    reply = session.post(url + "submit/", data={"xqueue_header": json.dumps(header),
                                                "xqueue_body": json.dumps(body)}, timeout=10).json()
    assert reply["return_code"] == 0, reply


def _wait(receiver, key, deadline, procs):
    while time.monotonic() < deadline:
        if key in receiver.results:
            return receiver.results[key][0]
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} exited"
        time.sleep(0.1)
    raise AssertionError(f"no result for {key}")


def test_student_rates_escalates_instructor_answers_in_chromium(tmp_path, fake_llm, browser):
    fake_llm.default = Reply.hint(HINT)
    handlers = tmp_path / "handlers"
    write_assignment(handlers, "squares", {
        "assignment.toml": 'title = "Sum of squares"\nkind = "io"\nmax_points = 2\n[hints]\nenabled = true\n',
        "description.md": "Write square_sum(xs): the sum of the squares of xs.\n",
        "tests/cases.toml": '[[case]]\nexpr = "square_sum([1, 2])"\nvisible = true\n'
                            '[[case]]\nexpr = "square_sum([31337])"\n',
        "solution/submission.py": SOLUTION,
    })
    port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    url = base + "/xqueue/"
    store_url = f"sqlite:///{tmp_path / 'hints.db'}"
    password = "pw-" + os.urandom(6).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XGRADER_")}
    env.update({"XGRADER_HINTS__STORE": store_url, "XGRADER_HINTS__PAGE_URL": base + "/hints/",
                "XGRADER_HINTS__LINK_SECRET": SECRET, "XGRADER_LOG_FORMAT": "json"})
    daemon_env = {**env, "XGRADER_QUEUE_URL": url, "XGRADER_QUEUE_NAMES": QUEUE, "XGRADER_QUEUE_USER": "xgrader",
                  "XGRADER_QUEUE_PASSWORD": password, "XGRADER_HANDLERS": str(handlers), "XGRADER_SANDBOX": "bwrap",
                  "XGRADER_POLL_MAX_S": "0.3", "XGRADER_SHUTDOWN_GRACE_S": "10",
                  "XGRADER_HINTS__ENABLED": "true", "XGRADER_HINTS__BASE_URL": fake_llm.url,
                  "XGRADER_HINTS__MODEL": "fake-model", "XGRADER_HINTS__API_KEY": "sk-e2e",
                  "XGRADER_HINTS__ANSWERS_IN_FEEDBACK": "true", "XGRADER_METRICS_PORT": str(metrics_port)}
    procs: dict[str, subprocess.Popen] = {}
    receiver = CallbackReceiver()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        procs["queue"] = subprocess.Popen(
            [sys.executable, "-m", "xgrader", "queue", "serve", "--port", str(port), "--db", str(tmp_path / "q.db"),
             "--queue", QUEUE, "--user", f"xgrader:{password}", "--user", "ana:ana-pw"],
            env=env, stdout=open(tmp_path / "queue.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(url + "status/", 30, procs["queue"])
        procs["daemon"] = subprocess.Popen(
            [sys.executable, "-m", "xgrader", "run"], env=daemon_env, stdout=open(tmp_path / "daemon.log", "wb"),
            stderr=subprocess.STDOUT, start_new_session=True)
        lms = requests.Session()
        login(lms, url, "xgrader", password)
        deadline = time.monotonic() + 120

        # 1. A wrong submission gets a hint from the loopback model, with a link.
        _submit(lms, url, "wrong", receiver.url, WRONG, "anon-e2e")
        msg = _wait(receiver, "wrong", deadline, procs)["msg"]
        assert HINT_LABEL in msg and html.escape(HINT, quote=True) in msg
        link = html.unescape(re.search(r'<a href="([^"]+)"', msg).group(1))
        assert link.startswith(base + "/hints/h/") and "anon-e2e" not in link

        # 2. The student opens it (no JavaScript), rates it not helpful, and asks the staff.
        student = browser.new_page(javascript=False)
        student.goto(link)
        assert student.text("#hint") == HINT and student.count("script") == 0
        student.screenshot(shots / "1-hint.png")
        student.click("#rate-unhelpful")
        assert student.url == link and "not helpful" in student.text("#rated")
        student.type("#note", NOTE)
        student.click("#escalate")
        assert "Waiting for the course staff" in student.text("#status")
        assert student.text("#note-sent") == NOTE and student.count("script") == 0   # shown as text
        student.screenshot(shots / "2-asked.png")

        # 3. An instructor logs into the dashboard, claims the request and answers.
        staff = browser.new_page(javascript=False)
        staff.goto(base + "/hints/staff/")
        staff.type("input[name=username]", "ana")
        staff.type("input[name=password]", "ana-pw")
        staff.click("button")
        assert staff.url == base + "/hints/staff/" and "signed in as ana" in staff.text("nav")
        assert "waiting" in staff.text("#queue .state") and "isn't that squaring?" in staff.text("#queue")
        staff.click("#queue a")
        assert staff.text("#note") == NOTE and staff.count("script") == 0
        assert "total += x * 2" in staff.text("pre.code") and "square_sum([1, 2])" in staff.text("#feedback")
        assert "square_sum([31337])" in staff.text("#tests tr.hidden")        # the hidden test, staff only
        hidden_row = staff.text("#tests tr.hidden")                           # and what it gave: 62674, not 982007569
        assert "actual: 62674" in hidden_row and "expected: 982007569" in hidden_row, hidden_row
        assert "982007569" not in msg and "62674" not in msg                  # never in the student's feedback
        assert staff.text("#hint") == HINT
        staff.click("#claim")
        assert "claimed by ana" in staff.text("#state")
        staff.type("#answer-text", ANSWER)
        staff.screenshot(shots / "3-staff.png")
        staff.click("#answer-send")
        assert "answered by ana" in staff.text("#state") and staff.text("#answer") == ANSWER

        # 4. The student's page shows the answer.
        student.goto(link)
        assert student.text("#answer") == ANSWER and "Answered on" in student.text("#status")
        student.screenshot(shots / "4-answer.png")

        # The answer also reaches the student's next feedback (operator setting), full marks or not.
        _submit(lms, url, "right", receiver.url, SOLUTION, "anon-e2e")
        right = _wait(receiver, "right", deadline, procs)
        assert right["correct"] is True and ANSWER_LABEL in right["msg"] and html.escape(ANSWER) in right["msg"]

        # The metrics and the report show the rating.
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        labels = 'assignment="squares",hint_type="debugging",model="fake-model"'
        assert f'xgrader_hint_ratings{{{labels},rating="unhelpful"}} 1.0' in metrics
        assert f"xgrader_hint_helpful_ratio{{{labels}}} 0.0" in metrics
        assert f"xgrader_hint_escalation_answer_seconds_count{{{labels}}} 1.0" in metrics
        assert "xgrader_hint_escalations_waiting 0.0" in metrics
        report = subprocess.run([sys.executable, "-m", "xgrader", "hints", "--store", store_url, "report"],
                                capture_output=True, text=True, env=env, timeout=60)
        assert report.returncode == 0, report.stderr
        row = next(line for line in report.stdout.splitlines() if line.startswith("squares"))
        assert row.split()[:8] == ["squares", "debugging", "fake-model", "1", "1", "0", "1", "0%"]
    finally:
        for proc in procs.values():   # SIGTERM: the daemon drains and stops its sandboxes; then the group
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
        receiver.stop()
    for shot in shots.iterdir():
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
