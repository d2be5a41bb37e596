"""The daemon records every graded submission in the attempt ledger, after
posting; a ledger outage is logged and counted and the result still posted.
Real parts: `xgrader queue serve` and `xgrader run` subprocesses (bwrap),
real callbacks, the ledger on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
import requests

from xgrader.daemon.demo_harness import free_port
from xgrader.ledger import Ledger
from tests.support.ledger_stack import RIGHT, WRONG, Stack, sample

pytestmark = pytest.mark.slow

@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_every_graded_submission_is_recorded_once(store, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'ledger.db'}" if store == "sqlite" else request.getfixturevalue("pg_url")
    stack = Stack(tmp_path, url)
    try:
        samples = [sample("right", RIGHT), sample("wrong", WRONG)]
        results = stack.grade(samples)
        assert all(len(results.get(s.key, [])) == 1 for s in samples), results
        ledger = Ledger(url)
        end = time.monotonic() + 20   # the child records after its report: shortly after the post
        while time.monotonic() < end and len(ledger.history(assignment="is_prime")) < 2:
            time.sleep(0.2)
        rows = ledger.history(assignment="is_prime")
    finally:
        stack.close()
    assert len(rows) == 2, rows
    by_student = {r.student: r for r in rows}
    assert set(by_student) == {"demo-right", "demo-wrong"}     # student_info's anonymous_student_id
    wrong = ledger.get(by_student["demo-wrong"].id)
    delivered = results[samples[1].key][0]
    assert wrong.source == "daemon" and wrong.queue == "demo" and wrong.submission_id.isdigit()
    assert wrong.score == delivered["score"] < wrong.max_score == 10
    assert wrong.feedback == delivered["msg"]               # the feedback exactly as the student got it
    assert wrong.student_response == WRONG
    assert wrong.assignment_version and wrong.xgrader_version
    assert {"fetch", "grade"} <= set(wrong.timings)
    squares = [t for t in wrong.tests if t.name == "test_squares_of_primes"]
    assert squares and squares[0].status == "failed" and not squares[0].visible
    assert by_student["demo-right"].correct and by_student["demo-right"].score == 10


def test_ledger_outage_is_logged_counted_and_the_result_still_posted(tmp_path):
    with socket.socket() as s:   # a port nobody listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    metrics_port = free_port()
    stack = Stack(tmp_path, f"postgresql://nobody@127.0.0.1:{dead}/ledger", metrics_port=metrics_port)
    try:
        samples = [sample("one", WRONG), sample("two", RIGHT)]
        results = stack.grade(samples)
        assert all(len(results.get(s.key, [])) == 1 for s in samples), results
        end = time.monotonic() + 20
        text = ""
        while time.monotonic() < end:
            text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            m = re.search(r'^xgrader_ledger_records_total\{outcome="error"\} (\S+)$', text, re.M)
            if m and float(m.group(1)) >= 2:
                break
            time.sleep(0.3)
        assert m and float(m.group(1)) == 2, text[-2000:]
        assert not re.search(r'xgrader_ledger_records_total\{outcome="recorded"\} [1-9]', text)
    finally:
        stack.close()
    log = (tmp_path / "daemon.log").read_text()
    failures = [json.loads(line) for line in log.splitlines() if '"ledger_record_failed"' in line]
    assert len(failures) == 2 and all(f.get("submission_id") for f in failures)
    assert any('"ledger_unavailable"' in line for line in log.splitlines())   # said once at start-up
