"""Regrades on the bundled queue server, each delivered to the LMS exactly once.

Two ways in:
  * `deliver_result`: `xgrader regrade --deliver` graded the submission again
    itself and posts the new reply (`POST /xqueue/regrade_result/`, logged in);
    it becomes the submission's result and goes through the LMS delivery.
  * `requeue`: the dashboard's regrade action queues an answered submission
    again as a copy under a new id (graders remember results by submission
    id); the next grader grades it with the current assignment version, and
    its put_result is delivered to the same LMS callback like a first result.

Both are keyed by (regrade id, submission id): the same regrade arriving
twice (a retried request, a double click) changes nothing the second time.
A submission whose previous delivery is still pending is refused ("busy")
rather than raced with the deliverer: try again once it is delivered.
"""

from __future__ import annotations

import json
import sqlite3
import time

from xgrader.queue_server.store import Delivery, Store

HANDOFF_S = 30.0   # as put_result: the deliverer's scan picks it up only if the handoff was lost


class RegradeStatus:
    OK = "ok"
    DUPLICATE = "duplicate"       # this regrade was already applied to this submission
    NO_SUCH = "no_such"
    NOT_ANSWERED = "not_answered"  # still waiting for its first result, or replaced by a newer submission
    BUSY = "busy"                 # its previous result is still being delivered


MESSAGES = {
    RegradeStatus.OK: "regrade accepted",
    RegradeStatus.DUPLICATE: "this regrade was already applied to this submission",
    RegradeStatus.NO_SUCH: "Submission does not exist",
    RegradeStatus.NOT_ANSWERED: "the submission has no result to regrade (still queued, or replaced by a newer one)",
    RegradeStatus.BUSY: "the previous result is still being delivered to the LMS; try again later",
}


def _begin(c: sqlite3.Connection, sid: int, regrade_id: str) -> tuple[str | None, tuple | None]:
    """Start the regrade's write transaction on an answered submission:
    (None, its row), or (the refusal, None) with the transaction rolled back."""
    c.execute("BEGIN IMMEDIATE")
    status, row = _check(c, sid, regrade_id)
    if status is not None:
        c.execute("ROLLBACK")
    return status, row


def _check(c: sqlite3.Connection, sid: int, regrade_id: str) -> tuple[str | None, tuple | None]:
    if c.execute("SELECT 1 FROM regrades WHERE regrade_id=? AND submission_id=?", (regrade_id, sid)).fetchone():
        return RegradeStatus.DUPLICATE, None
    row = c.execute("SELECT state, result, delivery, lms_callback_url, header FROM submissions WHERE id=?",
                    (sid,)).fetchone()
    if row is None:
        return RegradeStatus.NO_SUCH, None
    state, result, delivery, _url, _header = row
    if state != "answered" or result is None:
        return RegradeStatus.NOT_ANSWERED, None
    if delivery == "pending":
        return RegradeStatus.BUSY, None
    return None, row


def deliver_result(store: Store, sid: int, regrade_id: str, result: str, user: str = "") -> tuple[str, Delivery | None]:
    """Make `result` the submission's result and due for LMS delivery, once
    per (regrade id, submission). Returns (status, the delivery to hand to
    the deliverer when status is OK)."""
    now = time.time()
    with store.writer() as c:
        status, row = _begin(c, sid, regrade_id)
        if status is not None:
            return status, None
        _state, old, _delivery, callback_url, header = row
        c.execute("INSERT INTO regrades(regrade_id, submission_id, created, kind, user, old_result, new_result)"
                  " VALUES (?, ?, ?, 'result', ?, ?, ?)", (regrade_id, sid, now, user, old, result))
        c.execute("UPDATE submissions SET result=?, delivery='pending', delivery_tries=0, delivery_next=?,"
                  " delivery_error='' WHERE id=?", (result, now + HANDOFF_S, sid))
        c.execute("COMMIT")
    return RegradeStatus.OK, Delivery(sid, callback_url, header, result, 0)


def requeue(store: Store, sid: int, regrade_id: str, user: str = "") -> tuple[str, int | None]:
    """Queue an answered submission for the graders again, as a new
    submission (a copy of the LMS's header, body and files under a new id:
    graders remember what they graded by submission id and would re-post the
    old result); its result is delivered to the same LMS callback like any
    first result. Returns (status, the new submission id)."""
    now = time.time()
    with store.writer() as c:
        status, row = _begin(c, sid, regrade_id)
        if status is not None:
            return status, None
        new_id = int(c.execute(
            "INSERT INTO submissions(queue, lms_callback_url, lms_key, header, body, files, created)"
            " SELECT queue, lms_callback_url, lms_key, header, body, files, ? FROM submissions WHERE id=?",
            (now, sid)).lastrowid)
        c.execute("INSERT INTO regrades(regrade_id, submission_id, created, kind, user, old_result,"
                  " new_submission_id) VALUES (?, ?, ?, 'requeue', ?, ?, ?)",
                  (regrade_id, sid, now, user, row[1], new_id))
        c.execute("COMMIT")
    return RegradeStatus.OK, new_id


def regrade_of(store: Store, sid: int) -> tuple[int, float] | None:
    """(original submission id, when) if `sid` is a dashboard regrade's copy."""
    with store.conn() as c:
        row = c.execute("SELECT submission_id, created FROM regrades WHERE new_submission_id=?", (sid,)).fetchone()
    return (int(row[0]), float(row[1])) if row else None


def history(store: Store, sid: int) -> list[dict]:
    with store.conn() as c:
        rows = c.execute("SELECT r.regrade_id, r.created, r.kind, r.user, r.old_result,"
                         " coalesce(r.new_result, s.result), r.new_submission_id FROM regrades r"
                         " LEFT JOIN submissions s ON s.id = r.new_submission_id"
                         " WHERE r.submission_id=? ORDER BY r.created", (sid,)).fetchall()
    return [{"regrade_id": r[0], "created": r[1], "kind": r[2], "user": r[3],
             "old_score": _score(r[4]), "new_score": _score(r[5]), "new_submission_id": r[6]} for r in rows]


def _score(result: str | None) -> float | None:
    try:
        value = json.loads(result or "").get("score")
        return float(value) if value is not None else None
    except (ValueError, AttributeError, TypeError):
        return None
