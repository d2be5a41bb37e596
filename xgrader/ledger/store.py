"""The attempt ledger: every graded submission, on SQLite or PostgreSQL.

Tables (created and upgraded by versioned migrations, component "ledger"):
  attempts       one row per graded submission (who, what, which version, result)
  attempt_tests  one row per test of an attempt (status, points, what the report held)
  attempt_files  the attempt's files by name -> sha256
  blobs          content-addressed data: submitted files, the student's typed
                 response, the feedback HTML, the grade report JSON (identical
                 content is stored once)

Deleting (retention, one student's data) removes the attempts, then every
blob no attempt refers to any more.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, Sequence

from xgrader.ledger.db import Database, Tx
from xgrader.ledger.models import Attempt, AttemptRecord, AttemptSummary, TestOutcome, sha256

COMPONENT = "ledger"

MIGRATIONS: list[list[str]] = [
    # 1: the first schema
    [
        """CREATE TABLE blobs (
            sha256 TEXT PRIMARY KEY,
            size {bigint} NOT NULL,
            data {blob},                         -- NULL: over the size limit, the hash alone is kept
            touched {float} NOT NULL             -- last recorded: recent blobs are never collected
        )""",
        """CREATE TABLE attempts (
            id {id},
            graded_at {float} NOT NULL,
            source TEXT NOT NULL,
            student TEXT NOT NULL,
            queue TEXT NOT NULL,
            submission_id TEXT NOT NULL,
            assignment TEXT NOT NULL,
            assignment_version TEXT NOT NULL,
            payload TEXT NOT NULL,
            response_sha TEXT,
            outcome TEXT NOT NULL,
            score {float} NOT NULL,
            max_score {float} NOT NULL,
            correct INTEGER NOT NULL,
            signatures TEXT NOT NULL,
            feedback_sha TEXT,
            report_sha TEXT,
            timings TEXT NOT NULL,
            xgrader_version TEXT NOT NULL,
            regrade_of {bigint},
            regrade_id TEXT
        )""",
        "CREATE INDEX attempts_student ON attempts(student, graded_at)",
        "CREATE INDEX attempts_assignment ON attempts(assignment, graded_at)",
        "CREATE INDEX attempts_submission ON attempts(queue, submission_id)",
        "CREATE INDEX attempts_time ON attempts(graded_at)",
        """CREATE TABLE attempt_files (
            attempt_id {bigint} NOT NULL,
            name TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            PRIMARY KEY (attempt_id, name)
        )""",
        "CREATE INDEX attempt_files_sha ON attempt_files(sha256)",
        """CREATE TABLE attempt_tests (
            attempt_id {bigint} NOT NULL,
            idx INTEGER NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            visible INTEGER NOT NULL,
            weight {float} NOT NULL,
            points {float} NOT NULL,
            detail TEXT NOT NULL,
            PRIMARY KEY (attempt_id, idx)
        )""",
        "CREATE INDEX attempts_response ON attempts(response_sha)",
        "CREATE INDEX attempts_feedback ON attempts(feedback_sha)",
        "CREATE INDEX attempts_report ON attempts(report_sha)",
    ],
]

SUMMARY_COLUMNS = ("id, graded_at, source, student, queue, submission_id, assignment, assignment_version,"
                   " outcome, score, max_score, correct, signatures, regrade_of, regrade_id, xgrader_version")
BLOB_GRACE_S = 3600.0   # a blob recorded within this long is never collected (a record may be committing)


def _summary(row: Sequence[Any]) -> AttemptSummary:
    (aid, graded_at, source, student, queue, sid, assignment, version, outcome, score, max_score,
     correct, signatures, regrade_of, regrade_id, xv) = row
    return AttemptSummary(id=aid, graded_at=graded_at, source=source, student=student, queue=queue,
                          submission_id=sid, assignment=assignment, assignment_version=version,
                          outcome=outcome, score=score, max_score=max_score, correct=bool(correct),
                          signatures=json.loads(signatures or "[]"), regrade_of=regrade_of,
                          regrade_id=regrade_id, xgrader_version=xv)


class Ledger:
    def __init__(self, url: str, *, max_file_bytes: int = 5_000_000, connect_timeout_s: float = 5.0) -> None:
        self.db = Database(url, connect_timeout_s=connect_timeout_s)
        self.max_file_bytes = max_file_bytes
        self._migrated = False

    @property
    def url(self) -> str:
        return self.db.url

    def migrate(self) -> int:
        version = self.db.migrate(COMPONENT, MIGRATIONS)
        self._migrated = True
        return version

    def _ready(self) -> None:
        if not self._migrated:
            self.migrate()

    def close(self) -> None:
        self.db.close()

    # -- writing ---------------------------------------------------------------
    def _blob(self, tx: Tx, data: bytes, now: float) -> str:
        digest = sha256(data)
        stored = data if len(data) <= self.max_file_bytes else None
        tx.execute("INSERT INTO blobs(sha256, size, data, touched) VALUES (?, ?, ?, ?)"
                   " ON CONFLICT (sha256) DO UPDATE SET touched = excluded.touched",
                   (digest, len(data), stored, now))
        return digest

    def record(self, rec: AttemptRecord) -> int:
        """Store one attempt (one transaction). Returns its id."""
        self._ready()
        now = time.time()
        with self.db.transaction() as tx:
            response = self._blob(tx, rec.student_response.encode(), now) if rec.student_response else None
            feedback = self._blob(tx, rec.feedback.encode(), now) if rec.feedback else None
            report = self._blob(tx, json.dumps(rec.report, sort_keys=True).encode(), now) if rec.report else None
            aid = tx.insert_id(
                "INSERT INTO attempts(graded_at, source, student, queue, submission_id, assignment,"
                " assignment_version, payload, response_sha, outcome, score, max_score, correct, signatures,"
                " feedback_sha, report_sha, timings, xgrader_version, regrade_of, regrade_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.graded_at, rec.source, rec.student, rec.queue, rec.submission_id, rec.assignment,
                 rec.assignment_version, json.dumps(rec.payload, sort_keys=True), response, rec.outcome,
                 rec.score, rec.max_score, int(rec.correct), json.dumps(rec.signatures), feedback, report,
                 json.dumps(rec.timings, sort_keys=True), rec.xgrader_version, rec.regrade_of, rec.regrade_id))
            for name in sorted(rec.files):
                digest = self._blob(tx, rec.files[name], now)
                tx.execute("INSERT INTO attempt_files(attempt_id, name, sha256) VALUES (?, ?, ?)",
                           (aid, name, digest))
            for i, t in enumerate(rec.tests):
                tx.execute("INSERT INTO attempt_tests(attempt_id, idx, name, status, visible, weight, points,"
                           " detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (aid, i, t.name, t.status, int(t.visible), t.weight, t.points,
                            json.dumps(t.detail, sort_keys=True)))
        return aid

    # -- reading ---------------------------------------------------------------
    def history(self, *, student: str | None = None, assignment: str | None = None,
                since: float | None = None, until: float | None = None, queue: str | None = None,
                submission_id: str | None = None, limit: int = 1000) -> list[AttemptSummary]:
        """Attempts matching every given filter, oldest first."""
        self._ready()
        where, params = [], []
        for column, value in (("student", student), ("assignment", assignment), ("queue", queue),
                              ("submission_id", submission_id)):
            if value is not None:
                where.append(f"{column}=?")
                params.append(value)
        if since is not None:
            where.append("graded_at>=?")
            params.append(since)
        if until is not None:
            where.append("graded_at<?")
            params.append(until)
        sql = f"SELECT {SUMMARY_COLUMNS} FROM attempts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY graded_at, id LIMIT ?"
        with self.db.transaction(write=False) as tx:
            rows = tx.all(sql, (*params, int(limit)))
        return [_summary(r) for r in rows]

    def get(self, attempt_id: int) -> Attempt | None:
        self._ready()
        with self.db.transaction(write=False) as tx:
            row = tx.one(f"SELECT {SUMMARY_COLUMNS}, payload, response_sha, feedback_sha, report_sha, timings"
                         " FROM attempts WHERE id=?", (int(attempt_id),))
            if row is None:
                return None
            summary = _summary(row[:16])
            payload, response_sha, feedback_sha, report_sha, timings = row[16:]
            files_rows = tx.all("SELECT f.name, b.data FROM attempt_files f LEFT JOIN blobs b"
                                " ON b.sha256 = f.sha256 WHERE f.attempt_id=? ORDER BY f.name", (attempt_id,))
            blobs = self._blobs(tx, [response_sha, feedback_sha, report_sha])
            tests = tx.all("SELECT name, status, visible, weight, points, detail FROM attempt_tests"
                           " WHERE attempt_id=? ORDER BY idx", (attempt_id,))
        files = {name: bytes(data) for name, data in files_rows if data is not None}
        report = blobs.get(report_sha)
        return Attempt(
            **summary.model_dump(), payload=json.loads(payload or "{}"),
            student_response=(blobs.get(response_sha) or b"").decode("utf-8", "replace"),
            files=files, missing_files=[name for name, data in files_rows if data is None],
            tests=[TestOutcome(name=n, status=s, visible=bool(v), weight=w, points=p, detail=json.loads(d or "{}"))
                   for n, s, v, w, p, d in tests],
            feedback=(blobs.get(feedback_sha) or b"").decode("utf-8", "replace"),
            report=json.loads(report) if report else {}, timings=json.loads(timings or "{}"),
        )

    @staticmethod
    def _blobs(tx: Tx, digests: Iterable[str | None]) -> dict[str, bytes]:
        wanted = [d for d in digests if d]
        if not wanted:
            return {}
        marks = ", ".join("?" for _ in wanted)
        rows = tx.all(f"SELECT sha256, data FROM blobs WHERE sha256 IN ({marks})", wanted)
        return {digest: bytes(data) for digest, data in rows if data is not None}

    def students(self, assignment: str | None = None) -> list[str]:
        self._ready()
        with self.db.transaction(write=False) as tx:
            if assignment is None:
                rows = tx.all("SELECT DISTINCT student FROM attempts ORDER BY student")
            else:
                rows = tx.all("SELECT DISTINCT student FROM attempts WHERE assignment=? ORDER BY student",
                              (assignment,))
        return [r[0] for r in rows]

    # -- deleting ----------------------------------------------------------------
    def _delete_attempts(self, tx: Tx, where: str, params: Sequence[Any]) -> tuple[int, list[str]]:
        ids = [r[0] for r in tx.all(f"SELECT id FROM attempts WHERE {where}", params)]
        if not ids:
            return 0, []
        digests: set[str] = set()
        for chunk in _chunks(ids, 500):
            marks = ", ".join("?" for _ in chunk)
            digests.update(r[0] for r in tx.all(
                f"SELECT sha256 FROM attempt_files WHERE attempt_id IN ({marks})", chunk))
            for row in tx.all(f"SELECT response_sha, feedback_sha, report_sha FROM attempts"
                              f" WHERE id IN ({marks})", chunk):
                digests.update(d for d in row if d)
            tx.execute(f"DELETE FROM attempt_files WHERE attempt_id IN ({marks})", chunk)
            tx.execute(f"DELETE FROM attempt_tests WHERE attempt_id IN ({marks})", chunk)
            tx.execute(f"DELETE FROM attempts WHERE id IN ({marks})", chunk)
        return len(ids), sorted(digests)

    @staticmethod
    def _collect(tx: Tx, digests: Sequence[str]) -> int:
        """Delete those of `digests` that no attempt refers to any more."""
        gone = 0
        for chunk in _chunks(list(digests), 500):
            marks = ", ".join("?" for _ in chunk)
            cur = tx.execute(
                f"DELETE FROM blobs WHERE sha256 IN ({marks})"
                " AND NOT EXISTS (SELECT 1 FROM attempt_files f WHERE f.sha256 = blobs.sha256)"
                " AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.response_sha = blobs.sha256"
                " OR a.feedback_sha = blobs.sha256 OR a.report_sha = blobs.sha256)", chunk)
            gone += max(cur.rowcount, 0)
        return gone

    def delete_student(self, student: str) -> tuple[int, int]:
        """Remove one student's attempts and every stored file only they
        referred to. Returns (attempts, blobs) deleted."""
        self._ready()
        with self.db.transaction() as tx:
            n, digests = self._delete_attempts(tx, "student=?", (student,))
            blobs = self._collect(tx, digests)
        return n, blobs

    def prune(self, days: float, now: float | None = None) -> tuple[int, int]:
        """Retention: remove attempts graded more than `days` ago and the
        files only they referred to. Returns (attempts, blobs) deleted."""
        self._ready()
        cutoff = (now or time.time()) - days * 86400
        with self.db.transaction() as tx:
            n, digests = self._delete_attempts(tx, "graded_at<?", (cutoff,))
            blobs = self._collect(tx, digests)
            # Blobs orphaned some other way (an interrupted delete): collected
            # once they are old enough that no record can be committing them.
            orphans = [r[0] for r in tx.all("SELECT sha256 FROM blobs WHERE touched<?",
                                            (min(cutoff, time.time() - BLOB_GRACE_S),))]
            blobs += self._collect(tx, orphans)
        return n, blobs


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
