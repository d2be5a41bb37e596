"""Regrade: the latest attempt of each submission is selected; the bundled
queue server takes a regrade's new result once per regrade id (a repeat is a
duplicate, a pending delivery is "busy", an unanswered submission is
refused), behind its login and a CSRF check; a queue without a regrade path
is reported, not crashed on."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.support.daemon import MiniXQueue
from tests.support.queue import Receiver
from xgrader import report as rp
from xgrader.config import Settings
from xgrader.job import GradedSubmission, GradeRequest
from xgrader.ledger import AttemptRecord, Ledger
from xgrader.queue_server import QueueServer, QueueServerConfig
from xgrader.regrade import QueuePoster, select
from xgrader.wire import GraderReply


def record(ledger: Ledger, student: str, sid: str, score: float, when: float, queue: str = "q") -> int:
    report = rp.GradeReport(assignment="a", outcome=rp.Outcome.partial, score=score, max_score=10)
    return ledger.record(AttemptRecord.from_graded(GradedSubmission(
        source="daemon", request=GradeRequest(grader="a", student_response=f"# {score}\n", student_id=student,
                                              submission_id=sid),
        report=report, reply=GraderReply(correct=False, score=score, msg="m"), queue=queue, graded_at=when)))


def test_select_takes_the_latest_attempt_per_submission(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    now = time.time()
    record(ledger, "s1", "1", 2, now - 100)
    latest = record(ledger, "s1", "1", 5, now - 50)      # the same submission graded again
    other = record(ledger, "s2", "2", 7, now - 10)
    record(ledger, "s3", "3", 1, now - 1000)
    chosen = select(ledger, "a")
    assert [a.id for a in chosen if a.submission_id in ("1", "2")] == [latest, other]
    assert len(chosen) == 3 and chosen[0].student_response.startswith("# ")
    assert [a.student for a in select(ledger, "a", since=now - 60)] == ["s1", "s2"]
    assert [a.id for a in select(ledger, "a", student="s2")] == [other]
    assert select(ledger, "nothing") == []


@pytest.fixture
def queue(tmp_path):
    receiver = Receiver()
    server = QueueServer(QueueServerConfig(port=0, db=tmp_path / "q.db", queues=["q"], users={"g": "pw"},
                                           delivery_backoff_s=0.2)).start()
    yield server, receiver
    server.stop()
    receiver.stop()


def answered(server, receiver, key: str) -> int:
    s = requests.Session()
    s.post(server.url + "login/", data={"username": "g", "password": "pw"}, timeout=10)
    header = json.dumps({"lms_callback_url": receiver.url + key, "lms_key": key, "queue_name": "q"})
    s.post(server.url + "submit/", data={"xqueue_header": header, "xqueue_body": json.dumps(
        {"student_response": "x", "grader_payload": "{\"grader\": \"a\"}"})}, timeout=10)
    pulled = json.loads(json.loads(s.get(server.url + "get_submission/", params={"queue_name": "q"},
                                         timeout=10).text)["content"])
    s.post(server.url + "put_result/", data={"xqueue_header": pulled["xqueue_header"], "xqueue_body": json.dumps(
        {"correct": False, "score": 1, "msg": "first"})}, timeout=10)
    return json.loads(pulled["xqueue_header"])["submission_id"]


def wait_posts(receiver, n: int, timeout: float = 15) -> list[dict]:
    end = time.monotonic() + timeout
    while time.monotonic() < end and len(receiver.posts) < n:
        time.sleep(0.05)
    time.sleep(0.3)
    return list(receiver.posts)


def test_regrade_result_is_delivered_once_per_regrade(queue):
    server, receiver = queue
    sid = answered(server, receiver, "k1")
    wait_posts(receiver, 1)
    poster = QueuePoster(Settings(queue_url=server.url, queue_user="g", queue_password="pw"))
    body = json.dumps({"correct": True, "score": 9, "msg": "second"})
    assert poster.post(sid, "rg-1", body) == "posted: delivering to the LMS"
    assert poster.post(sid, "rg-1", body) == "posted earlier in this regrade"     # a retry: no second delivery
    posts = wait_posts(receiver, 3, timeout=3)
    assert [json.loads(p["xqueue_body"])["msg"] for p in posts] == ["first", "second"]
    with server.store.conn() as c:
        assert json.loads(c.execute("SELECT result FROM submissions WHERE id=?", (sid,)).fetchone()[0])["score"] == 9
    # a second regrade is delivered (once) too
    assert poster.post(sid, "rg-2", json.dumps({"correct": True, "score": 10, "msg": "third"})).startswith("posted")
    assert [json.loads(p["xqueue_body"])["msg"] for p in wait_posts(receiver, 3)] == ["first", "second", "third"]
    assert poster.post(999, "rg-3", body).startswith("not posted: Submission does not exist")


def test_regrade_refusals(queue):
    server, receiver = queue
    receiver.status = 500          # the LMS is down: the first delivery stays pending (retrying)
    sid = answered(server, receiver, "k2")
    poster = QueuePoster(Settings(queue_url=server.url, queue_user="g", queue_password="pw"))
    body = json.dumps({"correct": True, "score": 9, "msg": "new"})
    assert "still being delivered" in poster.post(sid, "rg-busy", body)
    # not answered yet: nothing to regrade
    s = requests.Session()
    s.post(server.url + "login/", data={"username": "g", "password": "pw"}, timeout=10)
    header = json.dumps({"lms_callback_url": receiver.url + "k3", "lms_key": "k3", "queue_name": "q"})
    s.post(server.url + "submit/", data={"xqueue_header": header, "xqueue_body": "{}"}, timeout=10)
    assert "no result to regrade" in poster.post(sid + 1, "rg-x", body)
    # without a session, without the CSRF header, with a malformed body
    anon = requests.post(server.url + "regrade_result/", data={"submission_id": sid, "regrade_id": "r",
                                                               "xqueue_body": body}, timeout=10)
    assert anon.status_code == 401
    no_csrf = s.post(server.url + "regrade_result/", data={"submission_id": sid, "regrade_id": "r",
                                                           "xqueue_body": body}, timeout=10)
    assert no_csrf.status_code == 403
    s.get(server.url + "login/", timeout=10)
    headers = {"X-CSRFToken": s.cookies.get("csrftoken")}
    for data in ({"submission_id": sid, "regrade_id": "r", "xqueue_body": "{not json"},
                 {"submission_id": sid, "regrade_id": "r", "xqueue_body": json.dumps({"score": 1})},
                 {"submission_id": "x", "regrade_id": "r", "xqueue_body": body},
                 {"submission_id": sid, "regrade_id": "", "xqueue_body": body}):
        assert s.post(server.url + "regrade_result/", data=data, headers=headers, timeout=10).status_code == 400


def test_a_queue_without_a_regrade_path_is_reported():
    mini = MiniXQueue().start()
    try:
        poster = QueuePoster(Settings(queue_url=mini.url, queue_user="u", queue_password="p"))
        said = poster.post(1, "rg", json.dumps({"correct": True, "score": 1, "msg": ""}))
    finally:
        mini.stop()
    assert said.startswith("not posted: this queue server has no regrade path")
