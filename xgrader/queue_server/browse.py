"""The dashboard's queries over the queue database: a filtered, paginated
list of submissions and one submission in full.

The assignment and student of a submission live inside its LMS body (the
grader_payload and student_info JSON layers). They never change, so they are
parsed once into a side table (`dashboard_index`), brought up to date before
each list query with the rows submitted since (a few per request; the first
visit to a large database indexes it once). Filtering and counting are then
indexed SQL, whatever the number of submissions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from xgrader.queue_server.store import Store

INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS dashboard_index (
    id INTEGER PRIMARY KEY,           -- submissions.id
    assignment TEXT NOT NULL,
    student TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dashboard_index_assignment ON dashboard_index(assignment, id);
CREATE INDEX IF NOT EXISTS dashboard_index_student ON dashboard_index(student, id);
CREATE INDEX IF NOT EXISTS sub_created ON submissions(created);
"""
INDEX_BATCH = 2000
STATES = ("waiting", "leased", "answered", "retired")
RESULTS = ("correct", "incorrect", "none")


def _layer(value: Any) -> dict:
    """A JSON layer that may itself be a JSON string; {} when malformed."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def parse_body(body: str) -> tuple[str, str, str]:
    """(assignment, student, student_response) of an LMS body; '' where missing or malformed."""
    outer = _layer(body)
    payload = outer.get("grader_payload")
    if isinstance(payload, str) and payload.strip().startswith("{"):
        payload = _layer(payload)
    grader = payload.get("grader") if isinstance(payload, dict) else payload
    info = _layer(outer.get("student_info"))
    response = outer.get("student_response")
    return (str(grader or "")[:200], str(info.get("anonymous_student_id") or "")[:200],
            response if isinstance(response, str) else "")


@dataclass
class Filters:
    assignment: str = ""
    student: str = ""
    state: str = ""          # waiting | leased | answered | retired
    result: str = ""         # correct | incorrect | none
    since: float | None = None
    until: float | None = None
    page: int = 1


@dataclass
class Row:
    id: int
    queue: str
    assignment: str
    student: str
    state: str
    created: float
    pulls: int
    puts: int
    score: str
    correct: bool | None
    delivery: str


@dataclass
class Detail:
    id: int
    queue: str
    assignment: str
    student: str
    lms_key: str
    state: str
    created: float
    answered: float | None
    leased_until: float
    pulls: int
    puts: int
    result: dict | None
    result_raw: str | None
    delivery: str
    delivery_tries: int
    delivery_error: str
    student_response: str
    files: dict[str, str]                 # name -> file token
    header: dict
    attempts: list[tuple[float, bool, str]] = field(default_factory=list)   # LMS delivery attempts


class Browser:
    def __init__(self, store: Store) -> None:
        self.store = store
        with store.writer() as c:
            c.executescript(INDEX_SCHEMA)

    def refresh_index(self) -> int:
        """Index the submissions not indexed yet. Returns how many."""
        added = 0
        while True:
            with self.store.conn() as c:
                last = c.execute("SELECT coalesce(max(id), 0) FROM dashboard_index").fetchone()[0]
                rows = c.execute("SELECT id, body FROM submissions WHERE id > ? ORDER BY id LIMIT ?",
                                 (last, INDEX_BATCH)).fetchall()
            if not rows:
                return added
            values = [(sid, *parse_body(body)[:2]) for sid, body in rows]
            with self.store.writer() as c:
                c.executemany("INSERT OR IGNORE INTO dashboard_index(id, assignment, student) VALUES (?, ?, ?)",
                              values)
            added += len(values)
            if len(rows) < INDEX_BATCH:
                return added

    def facets(self) -> tuple[list[str], list[str]]:
        """Known assignments and queues (for the filter form)."""
        with self.store.conn() as c:
            assignments = [r[0] for r in c.execute(
                "SELECT DISTINCT assignment FROM dashboard_index ORDER BY assignment LIMIT 500")]
            queues = [r[0] for r in c.execute("SELECT DISTINCT queue FROM submissions ORDER BY queue")]
        return assignments, queues

    def list(self, f: Filters, page_size: int, now: float | None = None) -> tuple[list[Row], int]:
        """One page of submissions (newest first) and the total matching."""
        self.refresh_index()
        now = time.time() if now is None else now
        where, params = [], []
        if f.assignment:
            where.append("i.assignment = ?")
            params.append(f.assignment)
        if f.student:
            where.append("i.student = ?")
            params.append(f.student)
        if f.state == "waiting":
            where.append("s.state = 'pending' AND s.leased_until <= ?")
            params.append(now)
        elif f.state == "leased":
            where.append("s.state = 'pending' AND s.leased_until > ?")
            params.append(now)
        elif f.state in ("answered", "retired"):
            where.append("s.state = ?")
            params.append(f.state)
        if f.result == "none":
            where.append("s.result IS NULL")
        elif f.result in ("correct", "incorrect"):
            # CASE: json_extract is never reached for a malformed reply (it would raise)
            where.append("s.result IS NOT NULL AND coalesce(CASE WHEN json_valid(s.result) THEN"
                         " json_extract(s.result, '$.correct') END, 0) " + ("= 1" if f.result == "correct" else "!= 1"))
        if f.since is not None:
            where.append("s.created >= ?")
            params.append(f.since)
        if f.until is not None:
            where.append("s.created < ?")
            params.append(f.until)
        sql_where = (" WHERE " + " AND ".join(where)) if where else ""
        base = f" FROM submissions s JOIN dashboard_index i ON i.id = s.id{sql_where}"
        offset = (max(1, f.page) - 1) * page_size
        with self.store.conn() as c:
            total = c.execute("SELECT count(*)" + base, params).fetchone()[0]
            rows = c.execute(
                "SELECT s.id, s.queue, i.assignment, i.student, s.state, s.leased_until, s.created, s.pulls,"
                " s.puts, s.result, s.delivery" + base + " ORDER BY s.id DESC LIMIT ? OFFSET ?",
                (*params, page_size, offset)).fetchall()
        out = []
        for sid, queue, assignment, student, state, leased, created, pulls, puts, result, delivery in rows:
            if state == "pending":
                state = "leased" if leased > now else "waiting"
            parsed = _layer(result) if result else None
            score = "" if not parsed else f"{parsed.get('score', '?')}"
            correct = None if not parsed else bool(parsed.get("correct"))
            out.append(Row(sid, queue, assignment, student, state, created, pulls, puts, score, correct, delivery))
        return out, int(total)

    def detail(self, sid: int) -> Detail | None:
        with self.store.conn() as c:
            row = c.execute(
                "SELECT id, queue, lms_key, header, body, files, created, state, leased_until, pulls, answered,"
                " result, puts, delivery, delivery_tries, delivery_error FROM submissions WHERE id=?",
                (sid,)).fetchone()
            if row is None:
                return None
            attempts = c.execute("SELECT at, ok, error FROM delivery_attempts WHERE submission_id=? ORDER BY at",
                                 (sid,)).fetchall()
        (sid, queue, lms_key, header, body, files, created, state, leased, pulls, answered, result, puts,
         delivery, tries, error) = row
        assignment, student, response = parse_body(body)
        if state == "pending":
            state = "leased" if leased > time.time() else "waiting"
        return Detail(id=sid, queue=queue, assignment=assignment, student=student, lms_key=lms_key, state=state,
                      created=created, answered=answered, leased_until=leased, pulls=pulls, puts=puts,
                      result=_layer(result) if result else None, result_raw=result, delivery=delivery,
                      delivery_tries=tries, delivery_error=error, student_response=response,
                      files=_layer(files), header=_layer(header),
                      attempts=[(at, bool(ok), err) for at, ok, err in attempts])

    def file_sizes(self, tokens: list[str]) -> dict[str, int]:
        if not tokens:
            return {}
        marks = ", ".join("?" for _ in tokens)
        with self.store.conn() as c:
            return dict(c.execute(f"SELECT token, length(data) FROM files WHERE token IN ({marks})",
                                  tokens).fetchall())
