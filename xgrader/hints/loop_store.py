"""The instructor loop's half of the hint store (deliveries, ratings,
escalations and answers, used form tokens, statistics, deletion), as mixins
of :class:`~xgrader.hints.store.SQLiteStore` and
:class:`~xgrader.hints.store.RedisStore`. The contract is documented on
:class:`~xgrader.hints.store.HintStore`; the state rules of an escalation are
:func:`xgrader.hints.records.transition`, applied inside each store's own
transaction (SQLite: BEGIN IMMEDIATE; Redis: WATCH/MULTI, retried on a
conflicting write).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Sequence

from xgrader.hints.records import (
    OPEN_STATES, Delivery, Escalation, EscalationState, GroupStats, LoopStats, Rating, Refused, transition,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    audit_id INTEGER PRIMARY KEY, at REAL NOT NULL, student TEXT NOT NULL, assignment TEXT NOT NULL,
    hint_type TEXT NOT NULL, model TEXT NOT NULL, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_student ON deliveries (student);
CREATE INDEX IF NOT EXISTS deliveries_at ON deliveries (at);
CREATE TABLE IF NOT EXISTS ratings (audit_id INTEGER PRIMARY KEY, at REAL NOT NULL, helpful INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS escalations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, audit_id INTEGER NOT NULL UNIQUE, at REAL NOT NULL,
    student TEXT NOT NULL, assignment TEXT NOT NULL, state TEXT NOT NULL, answered_at REAL,
    in_feedback_at REAL, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS escalations_state ON escalations (state, at);
CREATE INDEX IF NOT EXISTS escalations_sa ON escalations (student, assignment);
CREATE TABLE IF NOT EXISTS used_forms (nonce TEXT PRIMARY KEY, expires REAL NOT NULL);
"""


def _check_escalate(delivery: Delivery | None, rating: Rating | None, already: bool,
                    count: int, per_assignment: int) -> Delivery:
    if delivery is None:
        raise Refused("no such hint", 404)
    if already:
        raise Refused("you have already asked the course staff about this hint")
    if rating is None or rating.helpful:
        raise Refused("only a hint rated not helpful can be sent to the course staff")
    if count >= per_assignment:
        raise Refused(f"you have asked the course staff {count} time(s) about this assignment: "
                      "that is the limit", 429)
    return delivery


def _new_escalation(d: Delivery, note: str, now: float) -> Escalation:
    return Escalation(audit_id=d.audit_id, at=now, student=d.student, assignment=d.assignment,
                      hint_type=d.hint_type, model=d.model, note=note)


class SQLiteLoop:
    """Needs `_db()` and `_tx()` of SQLiteStore."""

    _db: Callable[[], Any]
    _tx: Callable[[], Any]

    # -- deliveries, forms, ratings ---------------------------------------------
    def delivery_put(self, d: Delivery) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO deliveries VALUES (?,?,?,?,?,?,?)",
                       (d.audit_id, d.at, d.student, d.assignment, d.hint_type.value, d.model, d.model_dump_json()))

    def delivery_get(self, audit_id: int) -> Delivery | None:
        row = self._db().execute("SELECT record FROM deliveries WHERE audit_id=?", (audit_id,)).fetchone()
        return Delivery.model_validate_json(row[0]) if row else None

    def use_form(self, nonce: str, expires: float) -> bool:
        with self._tx() as db:
            db.execute("DELETE FROM used_forms WHERE expires < ?", (time.time(),))
            cur = db.execute("INSERT OR IGNORE INTO used_forms VALUES (?,?)", (nonce, expires))
            return cur.rowcount == 1

    def rate(self, audit_id: int, helpful: bool) -> Rating:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM deliveries WHERE audit_id=?", (audit_id,)).fetchone() is None:
                raise Refused("no such hint", 404)
            if db.execute("SELECT 1 FROM ratings WHERE audit_id=?", (audit_id,)).fetchone() is not None:
                raise Refused("this hint has already been rated")
            rating = Rating(audit_id=audit_id, helpful=helpful)
            db.execute("INSERT INTO ratings VALUES (?,?,?)", (audit_id, rating.at, int(helpful)))
            return rating

    def rating_get(self, audit_id: int) -> Rating | None:
        row = self._db().execute("SELECT at, helpful FROM ratings WHERE audit_id=?", (audit_id,)).fetchone()
        return Rating(audit_id=audit_id, at=row[0], helpful=bool(row[1])) if row else None

    # -- escalations ------------------------------------------------------------
    def escalate(self, audit_id: int, note: str, per_assignment: int) -> Escalation:
        with self._tx() as db:
            delivery = self.delivery_get(audit_id)
            rating = self.rating_get(audit_id)
            already = self.escalation_for(audit_id) is not None
            count = self.escalations_count(delivery.student, delivery.assignment) if delivery else 0
            d = _check_escalate(delivery, rating, already, count, per_assignment)
            esc = _new_escalation(d, note, time.time())
            cur = db.execute("INSERT INTO escalations (audit_id, at, student, assignment, state, record) "
                             "VALUES (?,?,?,?,?,?)", (audit_id, esc.at, esc.student, esc.assignment,
                                                      esc.state.value, "{}"))
            esc = esc.model_copy(update={"id": int(cur.lastrowid)})
            db.execute("UPDATE escalations SET record=? WHERE id=?", (esc.model_dump_json(), esc.id))
            return esc

    def _escalation_where(self, where: str, args: tuple) -> Escalation | None:
        row = self._db().execute(f"SELECT record FROM escalations WHERE {where}", args).fetchone()
        return Escalation.model_validate_json(row[0]) if row else None

    def escalation_get(self, escalation_id: int) -> Escalation | None:
        return self._escalation_where("id=?", (escalation_id,))

    def escalation_for(self, audit_id: int) -> Escalation | None:
        return self._escalation_where("audit_id=?", (audit_id,))

    def escalations_count(self, student: str, assignment: str) -> int:
        return self._db().execute("SELECT COUNT(*) FROM escalations WHERE student=? AND assignment=?",
                                  (student, assignment)).fetchone()[0]

    def escalations(self, states: Sequence[EscalationState] | None = None, limit: int = 100) -> list[Escalation]:
        sql, args = "SELECT record FROM escalations", ()
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args = tuple(s.value for s in states)
        rows = self._db().execute(sql + " ORDER BY at, id LIMIT ?", (*args, limit))
        return [Escalation.model_validate_json(r[0]) for r in rows]

    def _save(self, db: Any, esc: Escalation) -> None:
        db.execute("UPDATE escalations SET state=?, answered_at=?, in_feedback_at=?, record=? WHERE id=?",
                   (esc.state.value, esc.answered_at, esc.in_feedback_at, esc.model_dump_json(), esc.id))

    def escalation_act(self, escalation_id: int, action: str, staff: str, text: str = "") -> Escalation:
        with self._tx() as db:
            esc = self.escalation_get(escalation_id)
            if esc is None:
                raise Refused(f"no escalation {escalation_id}", 404)
            new = transition(esc, action, staff, text)
            self._save(db, new)
            return new

    def take_answers(self, student: str, assignment: str) -> list[Escalation]:
        now = time.time()
        with self._tx() as db:
            rows = db.execute("SELECT record FROM escalations WHERE student=? AND assignment=? "
                              "AND answered_at IS NOT NULL AND in_feedback_at IS NULL ORDER BY answered_at",
                              (student, assignment)).fetchall()
            out = [Escalation.model_validate_json(r[0]).model_copy(update={"in_feedback_at": now}) for r in rows]
            for esc in out:
                self._save(db, esc)
            return out

    # -- statistics, deletion ------------------------------------------------------
    def loop_stats(self) -> LoopStats:
        db = self._db()
        groups = [GroupStats(assignment=r[0], hint_type=r[1], model=r[2], delivered=r[3], helpful=r[4] or 0,
                             unhelpful=r[5] or 0, escalated=r[6] or 0, answered=r[7] or 0,
                             answer_seconds=r[8] or 0.0) for r in db.execute(
            "SELECT d.assignment, d.hint_type, d.model, COUNT(*), SUM(r.helpful = 1), SUM(r.helpful = 0), "
            "COUNT(e.id), COUNT(e.answered_at), SUM(e.answered_at - e.at) "
            "FROM deliveries d LEFT JOIN ratings r ON r.audit_id = d.audit_id "
            "LEFT JOIN escalations e ON e.audit_id = d.audit_id GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")]
        counts = dict(db.execute("SELECT state, COUNT(*) FROM escalations WHERE state IN (?, ?) GROUP BY state",
                                 tuple(s.value for s in OPEN_STATES)).fetchall())
        oldest = db.execute("SELECT MIN(at) FROM escalations WHERE state IN (?, ?)",
                            tuple(s.value for s in OPEN_STATES)).fetchone()[0]
        return LoopStats(groups=groups, waiting=counts.get("waiting", 0), claimed=counts.get("claimed", 0),
                         oldest_open_at=oldest)

    def _drop_audits(self, db: Any, ids: list[int]) -> dict[str, int]:
        out = {"hints": 0, "ratings": 0, "escalations": 0, "cache": 0}
        for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
            marks = ",".join("?" * len(chunk))
            out["hints"] += db.execute(f"DELETE FROM deliveries WHERE audit_id IN ({marks})", chunk).rowcount
            out["ratings"] += db.execute(f"DELETE FROM ratings WHERE audit_id IN ({marks})", chunk).rowcount
            out["escalations"] += db.execute(f"DELETE FROM escalations WHERE audit_id IN ({marks})", chunk).rowcount
            out["cache"] += db.execute(f"DELETE FROM cache WHERE audit_id IN ({marks})", chunk).rowcount
        return out

    def forget_student(self, student: str) -> dict[str, int]:
        with self._tx() as db:
            ids = [r[0] for r in db.execute(
                "SELECT audit_id FROM deliveries WHERE student=? UNION "
                "SELECT id FROM audit WHERE json_extract(record, '$.student') = ?", (student, student))]
            out = self._drop_audits(db, ids)
            out["decisions"] = db.execute("DELETE FROM audit WHERE json_extract(record, '$.student') = ?",
                                          (student,)).rowcount
            out["escalations"] += db.execute("DELETE FROM escalations WHERE student=?", (student,)).rowcount
            out["quota"] = db.execute("DELETE FROM quota WHERE student=?", (student,)).rowcount
            return out

    def purge(self, before: float) -> dict[str, int]:
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT audit_id FROM deliveries WHERE at < ? UNION "
                                            "SELECT id FROM audit WHERE at < ?", (before, before))]
            out = self._drop_audits(db, ids)
            out["decisions"] = db.execute("DELETE FROM audit WHERE at < ?", (before,)).rowcount
            db.execute("DELETE FROM used_forms WHERE expires < ?", (time.time(),))
            return out


class RedisLoop:
    """Needs `_r()`, `p` (key prefix) and `audit_get` of RedisStore."""

    _r: Callable[[], Any]
    p: str

    _STAT_FIELDS = ("delivered", "helpful", "unhelpful", "escalated", "answered", "answer_seconds")

    def _k(self, *parts: Any) -> str:
        return self.p + ":".join(str(x) for x in parts)

    @staticmethod
    def _group(x: Delivery | Escalation) -> str:
        return json.dumps([x.assignment, x.hint_type.value, x.model])

    def _atomic(self, fn: Callable[[Any], Any], *watch: str) -> Any:
        """fn(pipe) reads with the keys watched, calls pipe.multi(), queues its
        writes; redis-py re-runs it when a watched key changed meanwhile."""
        return self._r().transaction(fn, *watch, value_from_callable=True)

    # -- deliveries, forms, ratings ---------------------------------------------
    def delivery_put(self, d: Delivery) -> None:
        key = self._k("delivery", d.audit_id)

        def fn(pipe: Any) -> None:
            existed = pipe.exists(key)
            pipe.multi()
            pipe.set(key, d.model_dump_json())
            pipe.zadd(self._k("deliveries"), {str(d.audit_id): d.at})
            if not existed:
                pipe.hincrby(self._k("stats", "delivered"), self._group(d), 1)
        self._atomic(fn, key)

    def delivery_get(self, audit_id: int) -> Delivery | None:
        raw = self._r().get(self._k("delivery", audit_id))
        return Delivery.model_validate_json(raw) if raw else None

    def use_form(self, nonce: str, expires: float) -> bool:
        ttl = max(1, int(expires - time.time()) + 1)
        return bool(self._r().set(self._k("used_form", nonce), "1", nx=True, ex=ttl))

    def rate(self, audit_id: int, helpful: bool) -> Rating:
        key = self._k("rating", audit_id)

        def fn(pipe: Any) -> Rating:
            raw = pipe.get(self._k("delivery", audit_id))
            if raw is None:
                raise Refused("no such hint", 404)
            if pipe.exists(key):
                raise Refused("this hint has already been rated")
            d = Delivery.model_validate_json(raw)
            rating = Rating(audit_id=audit_id, helpful=helpful)
            pipe.multi()
            pipe.set(key, rating.model_dump_json())
            pipe.hincrby(self._k("stats", "helpful" if helpful else "unhelpful"), self._group(d), 1)
            return rating
        return self._atomic(fn, key, self._k("delivery", audit_id))

    def rating_get(self, audit_id: int) -> Rating | None:
        raw = self._r().get(self._k("rating", audit_id))
        return Rating.model_validate_json(raw) if raw else None

    # -- escalations ------------------------------------------------------------
    def _sa(self, student: str, assignment: str) -> str:
        return self._k("esc_sa", json.dumps([student, assignment]))

    def escalate(self, audit_id: int, note: str, per_assignment: int) -> Escalation:
        d0 = self.delivery_get(audit_id)
        by_audit = self._k("esc_by_audit", audit_id)
        watch = [by_audit, self._k("rating", audit_id), self._k("delivery", audit_id)]
        if d0 is not None:
            watch.append(self._sa(d0.student, d0.assignment))

        def fn(pipe: Any) -> Escalation:
            raw = pipe.get(self._k("delivery", audit_id))
            d = Delivery.model_validate_json(raw) if raw else None
            rraw = pipe.get(self._k("rating", audit_id))
            already = pipe.exists(by_audit)
            count = pipe.scard(self._sa(d.student, d.assignment)) if d else 0
            d = _check_escalate(d, Rating.model_validate_json(rraw) if rraw else None, bool(already),
                                count, per_assignment)
            esc_id = int(pipe.incr(self._k("esc_seq")))   # a gap if the transaction is retried: harmless
            esc = _new_escalation(d, note, time.time()).model_copy(update={"id": esc_id})
            pipe.multi()
            pipe.set(self._k("esc", esc_id), esc.model_dump_json())
            pipe.set(by_audit, esc_id)
            pipe.sadd(self._sa(d.student, d.assignment), esc_id)
            pipe.zadd(self._k("esc_all"), {str(esc_id): esc.at})
            pipe.zadd(self._k("esc_open"), {str(esc_id): esc.at})
            pipe.hincrby(self._k("stats", "escalated"), self._group(d), 1)
            return esc
        return self._atomic(fn, *watch)

    def escalation_get(self, escalation_id: int) -> Escalation | None:
        raw = self._r().get(self._k("esc", escalation_id))
        return Escalation.model_validate_json(raw) if raw else None

    def escalation_for(self, audit_id: int) -> Escalation | None:
        esc_id = self._r().get(self._k("esc_by_audit", audit_id))
        return self.escalation_get(int(esc_id)) if esc_id else None

    def escalations_count(self, student: str, assignment: str) -> int:
        return int(self._r().scard(self._sa(student, assignment)))

    def escalations(self, states: Sequence[EscalationState] | None = None, limit: int = 100) -> list[Escalation]:
        wanted = set(states or ())
        index = "esc_open" if wanted and wanted <= set(OPEN_STATES) else "esc_all"
        out: list[Escalation] = []
        start = 0
        while len(out) < limit:
            ids = self._r().zrange(self._k(index), start, start + 499)
            if not ids:
                break
            start += len(ids)
            pipe = self._r().pipeline(transaction=False)
            for i in ids:
                pipe.get(self._k("esc", i))
            for raw in pipe.execute():
                if raw:
                    esc = Escalation.model_validate_json(raw)
                    if not wanted or esc.state in wanted:
                        out.append(esc)
        return out[:limit]

    def _queue_save(self, pipe: Any, old: Escalation, new: Escalation) -> None:
        pipe.set(self._k("esc", new.id), new.model_dump_json())
        if new.state in OPEN_STATES:
            pipe.zadd(self._k("esc_open"), {str(new.id): new.at})
        else:
            pipe.zrem(self._k("esc_open"), str(new.id))
        if new.answered_at is not None and old.answered_at is None:
            group = self._group(new)
            pipe.hincrby(self._k("stats", "answered"), group, 1)
            pipe.hincrbyfloat(self._k("stats", "answer_seconds"), group, new.answered_at - new.at)

    def escalation_act(self, escalation_id: int, action: str, staff: str, text: str = "") -> Escalation:
        key = self._k("esc", escalation_id)

        def fn(pipe: Any) -> Escalation:
            raw = pipe.get(key)
            if raw is None:
                raise Refused(f"no escalation {escalation_id}", 404)
            old = Escalation.model_validate_json(raw)
            new = transition(old, action, staff, text)
            pipe.multi()
            self._queue_save(pipe, old, new)
            return new
        return self._atomic(fn, key)

    def take_answers(self, student: str, assignment: str) -> list[Escalation]:
        sa = self._sa(student, assignment)
        ids = sorted(int(i) for i in self._r().smembers(sa))
        if not ids:
            return []
        keys = [self._k("esc", i) for i in ids]
        now = time.time()

        def fn(pipe: Any) -> list[Escalation]:
            taken = []
            for key in keys:
                raw = pipe.get(key)
                if raw:
                    esc = Escalation.model_validate_json(raw)
                    if esc.answered_at is not None and esc.in_feedback_at is None:
                        taken.append(esc)
            pipe.multi()
            out = []
            for esc in sorted(taken, key=lambda e: e.answered_at or 0):
                new = esc.model_copy(update={"in_feedback_at": now})
                self._queue_save(pipe, esc, new)
                out.append(new)
            return out
        return self._atomic(fn, *keys)

    # -- statistics, deletion ------------------------------------------------------
    def loop_stats(self) -> LoopStats:
        r = self._r()
        pipe = r.pipeline(transaction=False)
        for name in self._STAT_FIELDS:
            pipe.hgetall(self._k("stats", name))
        tables = dict(zip(self._STAT_FIELDS, pipe.execute()))
        groups: dict[str, GroupStats] = {}
        for name, table in tables.items():
            for group, value in table.items():
                assignment, hint_type, model = json.loads(group)
                g = groups.setdefault(group, GroupStats(assignment=assignment, hint_type=hint_type, model=model))
                setattr(g, name, float(value) if name == "answer_seconds" else int(value))
        open_ids = r.zrange(self._k("esc_open"), 0, -1, withscores=True)
        claimed = 0
        if open_ids:
            pipe = r.pipeline(transaction=False)
            for i, _ in open_ids:
                pipe.get(self._k("esc", i))
            claimed = sum(1 for raw in pipe.execute()
                          if raw and Escalation.model_validate_json(raw).state is EscalationState.claimed)
        return LoopStats(groups=sorted(groups.values(), key=lambda g: (g.assignment, g.hint_type, g.model)),
                         waiting=len(open_ids) - claimed, claimed=claimed,
                         oldest_open_at=open_ids[0][1] if open_ids else None)

    def _drop_delivery(self, audit_id: int, counts: dict[str, int]) -> None:
        """One delivered hint's records, and their share of the statistics."""
        r = self._r()
        d = self.delivery_get(audit_id)
        rating = self.rating_get(audit_id)
        esc = self.escalation_for(audit_id)
        pipe = r.pipeline(transaction=True)
        if d is not None:
            group = self._group(d)
            pipe.hincrby(self._k("stats", "delivered"), group, -1)
            if rating is not None:
                pipe.hincrby(self._k("stats", "helpful" if rating.helpful else "unhelpful"), group, -1)
                counts["ratings"] += 1
            if esc is not None:
                pipe.hincrby(self._k("stats", "escalated"), group, -1)
                if esc.answered_at is not None:
                    pipe.hincrby(self._k("stats", "answered"), group, -1)
                    pipe.hincrbyfloat(self._k("stats", "answer_seconds"), group, -(esc.answered_at - esc.at))
            counts["hints"] += 1
        if esc is not None:
            for index in ("esc_all", "esc_open"):
                pipe.zrem(self._k(index), str(esc.id))
            pipe.srem(self._sa(esc.student, esc.assignment), str(esc.id))
            pipe.delete(self._k("esc", esc.id))
            counts["escalations"] += 1
        pipe.delete(self._k("delivery", audit_id), self._k("rating", audit_id), self._k("esc_by_audit", audit_id))
        pipe.zrem(self._k("deliveries"), str(audit_id))
        pipe.execute()

    def _drop_audit(self, audit_id: int, assignment: str | None, counts: dict[str, int]) -> None:
        r = self._r()
        for key in r.smembers(self._k("cache_by_audit", audit_id)):
            counts["cache"] += int(r.delete(self._k("cache", key)))
        pipe = r.pipeline(transaction=True)
        pipe.delete(self._k("cache_by_audit", audit_id), self._k("audit", audit_id))
        pipe.zrem(self._k("audit_ids"), str(audit_id))
        if assignment is not None:
            pipe.zrem(self._k("audit_ids", assignment), str(audit_id))
        pipe.execute()
        counts["decisions"] += 1

    def _audits(self) -> Any:
        """Every audit record, oldest first, in batches."""
        r = self._r()
        start = 0
        while True:
            ids = r.zrange(self._k("audit_ids"), start, start + 499)
            if not ids:
                return
            start += len(ids)
            pipe = r.pipeline(transaction=False)
            for i in ids:
                pipe.get(self._k("audit", i))
            for i, raw in zip(ids, pipe.execute()):
                yield int(i), (json.loads(raw) if raw else None)

    def forget_student(self, student: str) -> dict[str, int]:
        r = self._r()
        counts = {"hints": 0, "ratings": 0, "escalations": 0, "cache": 0, "decisions": 0, "quota": 0}
        mine = [(i, rec.get("assignment")) for i, rec in list(self._audits()) if rec and rec.get("student") == student]
        for audit_id, _ in mine:
            self._drop_delivery(audit_id, counts)
        for audit_id, assignment in mine:
            self._drop_audit(audit_id, assignment, counts)
        # Deliveries whose audit record is gone already, and the student's quota counters.
        for audit_id in r.zrange(self._k("deliveries"), 0, -1):
            d = self.delivery_get(int(audit_id))
            if d is not None and d.student == student:
                self._drop_delivery(int(audit_id), counts)
        prefix = json.dumps([student])[:-1] + ", "
        pattern = self._k("quota", "") + "".join("\\" + c if c in "[]*?\\" else c for c in prefix) + "*"
        for key in r.scan_iter(match=pattern, count=500):
            if key.endswith("]"):   # the per-assignment counter (the per-type ones hold the same hints)
                counts["quota"] += int(r.zcard(key))
            r.delete(key)
        return counts

    def purge(self, before: float) -> dict[str, int]:
        r = self._r()
        counts = {"hints": 0, "ratings": 0, "escalations": 0, "cache": 0, "decisions": 0}
        for audit_id in r.zrangebyscore(self._k("deliveries"), "-inf", f"({before}"):
            self._drop_delivery(int(audit_id), counts)
        old = []
        for audit_id, rec in self._audits():   # ids grow with time: stop at the first young one
            if rec is not None and rec.get("at", 0) >= before:
                break
            old.append((audit_id, rec.get("assignment") if rec else None))
        for audit_id, assignment in old:
            self._drop_delivery(audit_id, counts)
            self._drop_audit(audit_id, assignment, counts)
        return counts
