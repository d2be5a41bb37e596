"""Regrade recorded submissions with the current assignment version.

    plan = select(ledger, assignment, since=..., student=...)   # latest attempt per submission
    result = regrade(grader, plan, jobs=2)                        # graded again, nothing changed yet
    deliver(result, settings, ledger)                             # --deliver: record + post once

Selection: for every submission of the assignment in the ledger (a queue
submission, or a batch / `grade --record` file), the latest recorded
attempt stands for it; attempts graded before `since` are left out, and
`student` narrows to one student.

Delivery (`--deliver`, never by default): every new result is recorded in
the ledger (source "regrade", pointing at the attempt it re-grades) and, for
submissions from the bundled queue server, posted to its
`regrade_result/` endpoint under one regrade id, which makes it the
submission's result and delivers it to the LMS once. Real xqueue has no
such path (docs/ledger.md says what to do there).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable

from pydantic import BaseModel, Field

from xgrader import pipeline
from xgrader.authoring import grade_many
from xgrader.grading import Grader
from xgrader.job import GradeRequest
from xgrader.ledger import Attempt, Ledger


class RegradeRow(BaseModel):
    attempt: int
    student: str
    queue: str
    submission_id: str
    max_score: float
    old_score: float
    new_score: float | None = None
    old_outcome: str
    new_outcome: str = ""
    change: str = ""          # up | down | same | error
    error: str = ""
    delivered: str = ""       # what --deliver did with it
    new_attempt: int | None = None


class RegradeResult(BaseModel):
    regrade_id: str
    assignment: str
    version: str = ""
    rows: list[RegradeRow] = Field(default_factory=list)

    def count(self, change: str) -> int:
        return sum(r.change == change for r in self.rows)

    def summary(self) -> str:
        return (f"{len(self.rows)} submissions regraded: {self.count('up')} up, {self.count('down')} down, "
                f"{self.count('same')} the same" + (f", {self.count('error')} not regraded" if self.count("error") else ""))


def select(ledger: Ledger, assignment: str, since: float | None = None, student: str | None = None,
           limit: int = 100_000) -> list[Attempt]:
    """The latest attempt of each recorded submission of `assignment`."""
    latest: dict[tuple[str, str, str], Any] = {}
    for a in ledger.history(assignment=assignment, student=student, limit=limit):
        latest[(a.queue, a.submission_id, a.student)] = a   # history is oldest first: the last one stays
    chosen = [a for a in latest.values() if since is None or a.graded_at >= since]
    return [full for a in sorted(chosen, key=lambda a: a.id) if (full := ledger.get(a.id)) is not None]


def request_of(attempt: Attempt) -> GradeRequest:
    return GradeRequest(grader=attempt.assignment, options=dict(attempt.payload.get("options") or {}),
                        student_response=attempt.student_response, files=dict(attempt.files),
                        student_id=attempt.student, submission_id=attempt.submission_id,
                        hint_type=attempt.payload.get("hint_type"), label=f"regrade-{attempt.id}")


def regrade(grader: Grader, assignment: str, attempts: list[Attempt], jobs: int = 2,
            progress: Callable[[int, int], None] | None = None) -> tuple[RegradeResult, dict[int, Any]]:
    """Grade every attempt's submission again. Returns the table and the new
    reports by attempt id (for delivery)."""
    result = RegradeResult(regrade_id=f"rg-{uuid.uuid4().hex[:16]}", assignment=assignment)
    try:
        result.version = grader.registry.get(assignment).version
    except Exception:
        pass
    items, rows = [], {}
    for a in attempts:
        row = RegradeRow(attempt=a.id, student=a.student, queue=a.queue, submission_id=a.submission_id,
                         max_score=a.max_score, old_score=a.score, old_outcome=a.outcome)
        rows[a.id] = row
        if a.missing_files:
            row.change, row.error = "error", f"files not stored (over the ledger's size limit): {a.missing_files}"
            continue
        items.append((str(a.id), request_of(a)))
    reports: dict[int, Any] = {}
    for graded in grade_many(grader, items, jobs=jobs, progress=progress):
        row = rows[int(graded.name)]
        if graded.report is None:
            row.change, row.error = "error", graded.error or "not graded"
            continue
        report = graded.report
        reports[row.attempt] = report
        row.new_score, row.new_outcome = report.score, report.outcome.value
        row.max_score = report.max_score
        row.change = ("up" if report.score > row.old_score + 1e-9 else
                      "down" if report.score < row.old_score - 1e-9 else "same")
    result.rows = [rows[a.id] for a in attempts]
    return result, reports


def deliver(result: RegradeResult, attempts: list[Attempt], reports: dict[int, Any], ledger: Ledger,
            poster: Any = None) -> None:
    """Record every new result in the ledger and post the queue ones (poster:
    a QueuePoster for the bundled queue server; None: record only)."""
    by_id = {a.id: a for a in attempts}
    for row in result.rows:
        report = reports.get(row.attempt)
        if report is None:
            row.delivered = "not regraded"
            continue
        attempt = by_id[row.attempt]
        reply = pipeline.reply_for(report)
        from xgrader.job import GradedSubmission
        from xgrader.ledger import AttemptRecord

        row.new_attempt = ledger.record(AttemptRecord.from_graded(GradedSubmission(
            source="regrade", request=request_of(attempt), report=report, reply=reply, queue=attempt.queue,
            student=attempt.student, graded_at=time.time(), regrade_of=attempt.id, regrade_id=result.regrade_id)))
        if not attempt.queue or not attempt.submission_id.isdigit() or attempt.source not in ("daemon", "regrade"):
            row.delivered = "recorded (not from a queue: nothing to post)"
        elif row.change == "same":
            row.delivered = "recorded (score unchanged: not posted)"
        elif poster is None:
            row.delivered = "recorded"
        else:
            row.delivered = poster.post(int(attempt.submission_id), result.regrade_id, reply.to_body())


class QueuePoster:
    """Posts regrade results to the bundled queue server's `regrade_result/`
    (logged in with the grader's queue credentials), each one once: the
    server ignores a repeat of the same regrade id and submission, so a
    retried request after a lost answer cannot deliver twice."""

    def __init__(self, settings: Any) -> None:
        import requests

        self.url = settings.queue_url
        self.session = requests.Session()
        self.timeout = settings.request_timeout_s
        self.session.get(self.url + "login/", timeout=self.timeout)
        token = self.session.cookies.get("csrftoken")
        headers = {"X-CSRFToken": token, "Referer": self.url} if token else {}
        reply = self.session.post(self.url + "login/", timeout=self.timeout, headers=headers, data={
            "username": settings.queue_user, "password": settings.queue_password.get_secret_value()})
        if _envelope(reply).get("return_code") != 0:
            raise RuntimeError(f"login to {self.url} failed: {reply.text[:200]}")
        if not self.session.cookies.get("csrftoken"):
            self.session.get(self.url + "login/", timeout=self.timeout)

    def post(self, sid: int, regrade_id: str, body: str) -> str:
        import requests

        data = {"submission_id": str(sid), "regrade_id": regrade_id, "xqueue_body": body}
        headers = {"X-CSRFToken": self.session.cookies.get("csrftoken", ""), "Referer": self.url}
        last = ""
        for _ in range(3):
            try:
                reply = self.session.post(self.url + "regrade_result/", data=data, headers=headers,
                                          timeout=self.timeout)
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {str(exc)[:200]}"
                time.sleep(1)
                continue
            envelope = _envelope(reply)
            content = envelope.get("content")
            if not isinstance(content, dict) and (reply.status_code == 404 or content in ("login_required", None)):
                return ("not posted: this queue server has no regrade path (a real xqueue: see docs/ledger.md)"
                        f" [{reply.status_code} {str(content or reply.text)[:80]}]")
            if isinstance(content, dict):
                status = content.get("status")
                return {"ok": "posted: delivering to the LMS", "duplicate": "posted earlier in this regrade"}.get(
                    status, f"not posted: {content.get('message', status)}")
            return f"not posted: {str(content or reply.text)[:200]}"
        return f"not posted: {last}"


def _envelope(reply: Any) -> dict:
    try:
        data = reply.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
