"""Every way in records into the ledger: push mode (answer first, record
meanwhile), `batch`, `grade --record`; and the ledger commands (`history`
as a table and JSON, `ledger show`, `prune`, `delete-student`); retention
applied by the recorder; hook buffering rules for the in-place hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support.grading import write_assignment
from tests.test_push import ADD, body, env_cache, handlers  # noqa: F401  (fixtures)
from xgrader.config import LedgerSettings, Settings
from xgrader.hooks import HookChain, Hooks
from xgrader.job import GradedSubmission, GradeRequest
from xgrader.ledger import Ledger, LedgerHooks
from xgrader.ledger import recorder as recorder_module
from xgrader.metrics import MetricsHooks
from xgrader.push import PushServer
from xgrader.backends import make_backend
from xgrader import report as rp
from xgrader.wire import GraderReply

ROOT = Path(__file__).resolve().parent.parent


def xgrader(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xgrader", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_push_mode_answers_then_records(handlers, env_cache, tmp_path):  # noqa: F811
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    settings = Settings(handlers=handlers, sandbox="bwrap", ledger=LedgerSettings(url=url))
    metrics = MetricsHooks()
    recorder = LedgerHooks(settings.ledger)
    recorder.prepare()
    hooks = HookChain(metrics, recorder)
    recorder.report_to = hooks
    server = PushServer(settings, make_backend(settings), hooks=hooks, metrics=metrics)
    ready = threading.Event()
    thread = threading.Thread(target=server.serve, args=("127.0.0.1", 0, ready), daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        reply = requests.post(f"http://127.0.0.1:{server.port}/", data=body("def add(a, b):\n    return a - b\n"),
                              timeout=60)
        answer = reply.json()
        assert answer["correct"] is False
        ledger = Ledger(url)
        end = time.monotonic() + 20
        while time.monotonic() < end and not ledger.history(student="s1"):
            time.sleep(0.1)
        (attempt,) = ledger.history(student="s1")
        full = ledger.get(attempt.id)
        assert (full.source, full.queue, full.assignment) == ("push", "push", "add")
        assert full.feedback == answer["msg"] and full.score == answer["score"]
        end = time.monotonic() + 10   # the child's late hook call, replayed after the answer
        while time.monotonic() < end and metrics.ledger.labels("recorded")._value.get() < 1:
            time.sleep(0.1)
        assert metrics.ledger.labels("recorded")._value.get() == 1
    finally:
        server.shutdown()
        thread.join(30)


@pytest.mark.slow
def test_batch_and_grade_record_and_the_ledger_commands(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    env = {"XGRADER_LEDGER__URL": url}
    samples = ROOT / "payload_handlers" / "is_prime" / "samples"
    out = xgrader("batch", "--payload", "is_prime", "--out", str(tmp_path / "gb.csv"), str(samples), env=env)
    assert out.returncode == 0, out.stderr
    assert "recorded 6 attempts in the ledger" in out.stdout
    graded = xgrader("grade", "--record", "--student", "alice", "--payload", "is_prime",
                     str(samples / "wrong_offbyone.py"), env=env)
    assert graded.returncode == 0, graded.stderr
    unrecorded = xgrader("batch", "--no-record", "--payload", "is_prime", "--out", str(tmp_path / "g2.csv"),
                         str(samples), env=env)
    assert unrecorded.returncode == 0

    table = xgrader("history", "--ledger", url, "--assignment", "is_prime")
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "graded", "(UTC)", "student"] and len(lines) == 2 + 7
    assert "wrong_prints.py" in table.stdout and "is_prime gives back None" in table.stdout
    rows = [json.loads(line) for line in xgrader("history", "--ledger", url, "--student", "alice",
                                                 "--json").stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["source"] == "grade" and rows[0]["score"] == 6
    shown = xgrader("ledger", "show", "--ledger", url, str(rows[0]["id"]))
    assert "hidden  failed" in shown.stdout and "def is_prime" in shown.stdout
    deleted = xgrader("ledger", "delete-student", "--ledger", url, "alice")
    assert deleted.stdout.startswith("deleted 1 attempts of alice")
    assert "no attempts recorded" in xgrader("history", "--ledger", url, "--student", "alice").stdout
    pruned = xgrader("ledger", "prune", "--ledger", url, "--days", "1")
    assert pruned.stdout.startswith("deleted 0 attempts")
    assert xgrader("history", "--ledger", url).returncode == 2                  # needs a filter
    assert xgrader("history", "--ledger", f"sqlite:///{tmp_path / 'none.db'}", "--student", "x").returncode == 2


def _graded(i: int, when: float) -> GradedSubmission:
    report = rp.GradeReport(assignment="a", outcome=rp.Outcome.passed, score=1, max_score=1)
    return GradedSubmission(source="daemon", request=GradeRequest(grader="a", student_response=f"x = {i}\n",
                                                                  student_id=f"s{i}", submission_id=str(i)),
                            report=report, reply=GraderReply(correct=True, score=1, msg="ok"), queue="q",
                            graded_at=when)


def test_recorder_applies_retention_and_reports_outcomes(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_module, "PRUNE_EVERY", 3)
    outcomes: list[str] = []

    class Seen(Hooks):
        def on_ledger(self, outcome: str, seconds: float) -> None:
            outcomes.append(outcome)

    url = f"sqlite:///{tmp_path / 'r.db'}"
    hooks = LedgerHooks(LedgerSettings(url=url, retention_days=10), report_to=Seen())
    hooks.on_attempt(_graded(1, time.time() - 30 * 86400))
    hooks.on_attempt(_graded(2, time.time() - 20 * 86400))
    hooks.on_attempt(_graded(3, time.time()))          # the third recorded: retention runs
    assert [a.student for a in Ledger(url).history()] == ["s3"]
    assert outcomes == ["recorded"] * 3
    (tmp_path / "a-file").write_text("not a folder")
    broken = LedgerHooks(LedgerSettings(url=f"sqlite:///{tmp_path}/a-file/ledger.db"), report_to=Seen())
    broken.on_attempt(_graded(4, time.time()))         # never raises
    assert outcomes[-1] == "error"


def test_on_attempt_runs_in_place_in_a_forked_child(tmp_path):
    """HookChain buffers hooks in a forked child for the parent, except
    on_attempt: its arguments stay in the child, which records them itself."""
    url = f"sqlite:///{tmp_path / 'f.db'}"
    recorder = LedgerHooks(LedgerSettings(url=url))
    recorder.prepare()
    chain = HookChain(recorder)
    recorder.report_to = chain
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            chain.on_attempt(_graded(7, time.time()))
            os.write(w, json.dumps(chain.take_child_events()).encode())
        finally:
            os._exit(0)
    os.close(w)
    events = json.loads(os.read(r, 65536) or b"[]")
    os.waitpid(pid, 0)
    assert [a.student for a in Ledger(url).history()] == ["s7"]
    assert [e[0] for e in events] == ["on_ledger"] and events[0][1][0] == "recorded"
    chain.replay([["on_attempt", [{}], {}]])            # a child cannot make the parent record
    assert len(Ledger(url).history()) == 1
