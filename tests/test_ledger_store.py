"""The attempt ledger's store contract, on SQLite and on a real PostgreSQL
server (tests/support/postgres.py): recording, history, content-addressed
files, migrations, retention, deleting one student's data, concurrent writers."""

from __future__ import annotations

import json
import threading
import time

import pytest

from xgrader.job import GradedSubmission, GradeRequest
from xgrader.ledger import AttemptRecord, Database, DatabaseError, Ledger
from xgrader.ledger.store import COMPONENT, MIGRATIONS
from xgrader import report as rp
from xgrader.wire import GraderReply


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("pg_url")


def graded(student="stu-1", score=3.0, code="def f(): return 1\n", files=None, when=None,
           assignment="is_prime", sid="7", queue="q1", source="daemon") -> GradedSubmission:
    report = rp.GradeReport(
        assignment=assignment, outcome=rp.Outcome.partial if score < 10 else rp.Outcome.passed,
        score=score, max_score=10, version="v1abc", signatures=["is_prime gives back None"],
        tests=[rp.TestReport(name="test_small", status=rp.TestStatus.passed, points=3, weight=3),
               rp.TestReport(name="hidden test 1", status=rp.TestStatus.failed, visible=False, weight=7,
                          exception_type="AssertionError"),
               rp.TestReport(name="test_visible", status=rp.TestStatus.failed, expected="True", actual="None",
                          input="is_prime(7)", message="wrong")])
    request = GradeRequest(grader=assignment, student_response=code, files=files or {},
                           student_id=student, submission_id=sid, options={"seed": 1})
    reply = GraderReply(correct=score >= 10, score=score, msg=f"<p>{score}/10 &lt;b&gt;</p>")
    return GradedSubmission(source=source, request=request, report=report, reply=reply, queue=queue,
                            graded_at=when or time.time(), timings={"fetch": 0.01, "grade": 0.5})


def test_record_and_read_back_everything(ledger_url):
    ledger = Ledger(ledger_url)
    assert ledger.migrate() == len(MIGRATIONS)
    aid = ledger.record(AttemptRecord.from_graded(graded(files={"data.csv": b"a,b\n1,2\n"})))
    got = ledger.get(aid)
    assert got is not None
    assert (got.student, got.queue, got.submission_id, got.assignment) == ("stu-1", "q1", "7", "is_prime")
    assert got.assignment_version == "v1abc" and got.source == "daemon"
    assert got.student_response == "def f(): return 1\n"
    assert got.files == {"data.csv": b"a,b\n1,2\n"}
    assert (got.score, got.max_score, got.correct, got.outcome) == (3.0, 10.0, False, "partial")
    assert got.signatures == ["is_prime gives back None"]
    assert got.feedback == "<p>3.0/10 &lt;b&gt;</p>"
    assert [t.name for t in got.tests] == ["test_small", "hidden test 1", "test_visible"]
    hidden = got.tests[1]
    assert (hidden.visible, hidden.status, hidden.detail) == (False, "failed", {"exception_type": "AssertionError"})
    assert got.tests[2].detail["actual"] == "None" and got.tests[2].detail["input"] == "is_prime(7)"
    assert got.timings == {"fetch": 0.01, "grade": 0.5}
    assert got.payload == {"options": {"seed": 1}}
    assert got.report["explanations"] == [] and got.report["outcome"] == "partial"
    assert got.xgrader_version


def test_files_are_content_addressed(ledger_url):
    ledger = Ledger(ledger_url)
    for student in ("a", "b", "c"):
        ledger.record(AttemptRecord.from_graded(graded(student=student, files={"x.py": b"same bytes"})))
    with ledger.db.transaction(write=False) as tx:
        assert tx.one("SELECT count(*) FROM blobs WHERE size=10")[0] == 1
        assert tx.one("SELECT count(*) FROM attempt_files")[0] == 3


def test_history_filters_and_order(ledger_url):
    ledger = Ledger(ledger_url)
    now = time.time()
    ledger.record(AttemptRecord.from_graded(graded(student="s1", score=2, when=now - 50)))
    ledger.record(AttemptRecord.from_graded(graded(student="s2", score=5, when=now - 40)))
    ledger.record(AttemptRecord.from_graded(graded(student="s1", score=10, when=now - 30, assignment="sum_digits")))
    ledger.record(AttemptRecord.from_graded(graded(student="s1", score=7, when=now - 20)))
    assert [a.score for a in ledger.history(student="s1")] == [2, 10, 7]
    assert [a.student for a in ledger.history(assignment="is_prime")] == ["s1", "s2", "s1"]
    assert [a.score for a in ledger.history(student="s1", assignment="is_prime")] == [2, 7]
    assert [a.score for a in ledger.history(assignment="is_prime", since=now - 45)] == [5, 7]
    assert ledger.history(student="nobody") == []


def test_delete_student_removes_their_records_and_only_their_files(ledger_url):
    ledger = Ledger(ledger_url)
    shared = b"print('shared')"
    ledger.record(AttemptRecord.from_graded(graded(student="gone", code="secret_of_gone = 1\n",
                                                   files={"a.txt": shared, "mine.txt": b"only gone"})))
    ledger.record(AttemptRecord.from_graded(graded(student="stays", files={"a.txt": shared})))
    attempts, blobs = ledger.delete_student("gone")
    assert attempts == 1 and blobs >= 2
    assert ledger.history(student="gone") == []
    with ledger.db.transaction(write=False) as tx:
        data = [bytes(r[0]) for r in tx.all("SELECT data FROM blobs WHERE data IS NOT NULL")]
    assert shared in data                        # still referred to by "stays"
    assert b"only gone" not in data and b"secret_of_gone = 1\n" not in data
    (kept,) = ledger.history(student="stays")
    assert ledger.get(kept.id).files == {"a.txt": shared}


def test_retention_deletes_old_attempts_and_their_files(ledger_url):
    ledger = Ledger(ledger_url)
    now = time.time()
    ledger.record(AttemptRecord.from_graded(graded(student="old", files={"o.txt": b"old file"},
                                                   code="old = 1\n", when=now - 40 * 86400)))
    ledger.record(AttemptRecord.from_graded(graded(student="new", files={"n.txt": b"new file"}, when=now - 86400)))
    attempts, blobs = ledger.prune(30)
    assert attempts == 1 and blobs >= 2
    assert [a.student for a in ledger.history()] == ["new"]
    with ledger.db.transaction(write=False) as tx:
        data = {bytes(r[0]) for r in tx.all("SELECT data FROM blobs WHERE data IS NOT NULL")}
    assert b"new file" in data and b"old file" not in data and b"old = 1\n" not in data


def test_files_over_the_limit_are_kept_by_hash_only(ledger_url):
    ledger = Ledger(ledger_url, max_file_bytes=100)
    aid = ledger.record(AttemptRecord.from_graded(graded(files={"big.bin": b"x" * 1000, "s.txt": b"small"})))
    got = ledger.get(aid)
    assert got.files == {"s.txt": b"small"} and got.missing_files == ["big.bin"]


def test_migrations_are_versioned_and_applied_once(ledger_url):
    db = Database(ledger_url)
    steps = [["CREATE TABLE extra_a (x INTEGER)"], ["CREATE TABLE extra_b (y INTEGER)"]]
    assert db.migrate("extra", steps[:1]) == 1
    assert db.migrate("extra", steps[:1]) == 1          # nothing applied twice
    assert db.migrate("extra", steps) == 2              # only the new step
    with db.transaction() as tx:
        tx.execute("INSERT INTO extra_b(y) VALUES (?)", (1,))
        versions = dict(tx.all("SELECT component, version FROM schema_versions"))
    assert versions["extra"] == 2
    with pytest.raises(DatabaseError, match="newer than this"):
        db.migrate("extra", steps[:1])                  # an older xgrader refuses a newer store
    Ledger(ledger_url).migrate()
    with db.transaction(write=False) as tx:
        assert dict(tx.all("SELECT component, version FROM schema_versions"))[COMPONENT] == len(MIGRATIONS)


def test_concurrent_writers_lose_nothing(ledger_url):
    """Replicas (here threads with their own connections) recording at once,
    and migrating at once on a fresh store."""
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            ledger = Ledger(ledger_url)
            for i in range(15):
                ledger.record(AttemptRecord.from_graded(graded(student=f"w{n}", sid=f"{n}-{i}",
                                                               files={"f.py": f"{n}-{i}".encode()})))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    history = Ledger(ledger_url).history()
    assert len(history) == 60 and len({(a.student, a.submission_id) for a in history}) == 60


def test_unreachable_store_is_a_clear_error(tmp_path):
    with pytest.raises(DatabaseError, match="cannot connect"):
        Ledger("postgresql://nobody@127.0.0.1:1/none", connect_timeout_s=1).migrate()
    with pytest.raises(DatabaseError, match="sqlite:///PATH or postgresql"):
        Ledger("mysql://x")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(DatabaseError):
        Ledger(f"sqlite:///{tmp_path / 'dir.db'}").migrate()


def test_password_never_in_messages():
    from xgrader.ledger.db import describe

    assert describe("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert "s3cret" not in json.dumps(describe("postgresql://u:s3cret@h/db"))
