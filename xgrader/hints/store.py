"""One small store for everything hints share across processes and replicas:
quotas (reserved atomically, counted only when delivered), the hint cache,
the cross-process concurrency slots, the circuit breaker, per-assignment
switches and the audit log; and the instructor loop (xgrader/hints/loop_store.py):
delivered hints with their student page, ratings, escalations, answers.

`open_store(url)`: `sqlite:///path.db` (default: one host, any number of
processes) or `redis://host:port/db` (replicas). The daemon forks a child per
submission, so connections are opened lazily per process id: a connection is
never shared across a fork.
"""

from __future__ import annotations

import abc
import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from xgrader.hints.loop_store import SCHEMA as LOOP_SCHEMA
from xgrader.hints.loop_store import RedisLoop, SQLiteLoop
from xgrader.hints.models import AuditRecord, CachedHint
from xgrader.hints.records import Delivery, Escalation, EscalationState, LoopStats, Rating
from xgrader.sqlite_open import connect_wal


class HintStore(abc.ABC):
    """Every method is atomic on its own; callers never hold a lock across calls."""

    # -- quotas -------------------------------------------------------------
    @abc.abstractmethod
    def reserve(self, student: str, assignment: str, hint_type: str,
                per_assignment: int, per_type: int, hold_s: float) -> str | None:
        """Reserve one hint if delivered + reserved stay within both limits.
        A reservation not committed within hold_s lapses (a killed child)."""

    @abc.abstractmethod
    def commit(self, token: str) -> None:
        """The reserved hint was delivered: it counts from now on."""

    @abc.abstractmethod
    def release(self, token: str) -> None:
        """No hint was delivered: give the reservation back."""

    @abc.abstractmethod
    def delivered(self, student: str, assignment: str, hint_type: str | None = None) -> int: ...

    # -- cache --------------------------------------------------------------
    @abc.abstractmethod
    def cache_get(self, key: str) -> CachedHint | None: ...

    @abc.abstractmethod
    def cache_put(self, key: str, entry: CachedHint) -> None: ...

    @abc.abstractmethod
    def cache_delete(self, key: str) -> None: ...

    # -- concurrency slots (a semaphore across processes) -------------------
    @abc.abstractmethod
    def acquire_slot(self, limit: int, hold_s: float) -> str | None: ...

    @abc.abstractmethod
    def release_slot(self, token: str) -> None: ...

    # -- circuit breaker ----------------------------------------------------
    @abc.abstractmethod
    def breaker_open(self) -> bool:
        """True while the endpoint is considered down (calls are skipped)."""

    @abc.abstractmethod
    def breaker_record(self, ok: bool, threshold: int, reset_s: float) -> None:
        """A success closes it; `threshold` failures in a row open it for reset_s."""

    # -- per-assignment switch ----------------------------------------------
    @abc.abstractmethod
    def set_disabled(self, assignment: str, disabled: bool) -> None: ...

    @abc.abstractmethod
    def disabled(self) -> list[str]: ...

    def is_disabled(self, assignment: str) -> bool:
        return assignment in self.disabled()

    # -- audit --------------------------------------------------------------
    @abc.abstractmethod
    def audit_add(self, record: AuditRecord) -> int: ...

    @abc.abstractmethod
    def audit_get(self, audit_id: int) -> AuditRecord | None: ...

    @abc.abstractmethod
    def audit_list(self, limit: int = 50, assignment: str | None = None) -> list[AuditRecord]:
        """Newest first."""

    @abc.abstractmethod
    def block(self, audit_id: int) -> bool:
        """Mark the decision blocked and drop its hint from the cache, so it is
        never served again. False if no such record."""

    # -- the instructor loop: student pages, ratings, escalations ---------------
    # State changes that are not allowed raise records.Refused (with an HTTP status).
    @abc.abstractmethod
    def delivery_put(self, delivery: Delivery) -> None:
        """A delivered hint with a student page: what the page and the staff see."""

    @abc.abstractmethod
    def delivery_get(self, audit_id: int) -> Delivery | None: ...

    @abc.abstractmethod
    def use_form(self, nonce: str, expires: float) -> bool:
        """Mark a one-time form token used; False if it was used already (a
        replay or a double submit). Kept until `expires`."""

    @abc.abstractmethod
    def rate(self, audit_id: int, helpful: bool) -> Rating:
        """Record the student's rating; one per hint (Refused otherwise)."""

    @abc.abstractmethod
    def rating_get(self, audit_id: int) -> Rating | None: ...

    @abc.abstractmethod
    def escalate(self, audit_id: int, note: str, per_assignment: int) -> Escalation:
        """Send a hint rated not helpful to the staff, at most once per hint and
        `per_assignment` times per (student, assignment) (Refused otherwise)."""

    @abc.abstractmethod
    def escalation_get(self, escalation_id: int) -> Escalation | None: ...

    @abc.abstractmethod
    def escalation_for(self, audit_id: int) -> Escalation | None: ...

    @abc.abstractmethod
    def escalations_count(self, student: str, assignment: str) -> int: ...

    @abc.abstractmethod
    def escalations(self, states: Sequence[EscalationState] | None = None, limit: int = 100) -> list[Escalation]:
        """Oldest first; only these states if given."""

    @abc.abstractmethod
    def escalation_act(self, escalation_id: int, action: str, staff: str, text: str = "") -> Escalation:
        """claim | release | answer | close, by `staff` (records.transition)."""

    @abc.abstractmethod
    def take_answers(self, student: str, assignment: str) -> list[Escalation]:
        """Answers not yet added to the student's feedback, marked as added."""

    @abc.abstractmethod
    def loop_stats(self) -> LoopStats:
        """Ratings and escalations per (assignment, hint type, model), open requests."""

    @abc.abstractmethod
    def forget_student(self, student: str) -> dict[str, int]:
        """Delete everything kept about one student (decisions, hints, ratings,
        escalations, cached hints made from their code, quota counters)."""

    @abc.abstractmethod
    def purge(self, before: float) -> dict[str, int]:
        """Delete decisions and delivered hints (with their ratings,
        escalations, cached hints) older than `before` (a Unix time)."""

    def close(self) -> None: ...


def check_store_url(url: str) -> None:
    if not url.startswith(("sqlite:///", "redis://", "rediss://", "unix://")) or url == "sqlite:///":
        raise ValueError(f"hint store URL must be sqlite:///PATH or redis://HOST:PORT/DB, not {url!r}")
    if not url.startswith("sqlite:///"):
        from xgrader.extras import require

        require("redis", "redis")  # at start, not in the first job that needs a hint


def open_store(url: str) -> HintStore:
    check_store_url(url)
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url[len("sqlite:///"):]))
    return RedisStore(url)


# ---------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS quota (
    token TEXT PRIMARY KEY, student TEXT NOT NULL, assignment TEXT NOT NULL,
    hint_type TEXT NOT NULL, expires REAL            -- NULL once delivered
);
CREATE INDEX IF NOT EXISTS quota_sa ON quota (student, assignment);
CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, entry TEXT NOT NULL, audit_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS slots (token TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS breaker (id INTEGER PRIMARY KEY CHECK (id = 1), failures INTEGER NOT NULL,
    open_until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS disabled (assignment TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, assignment TEXT NOT NULL,
    outcome TEXT NOT NULL, record TEXT NOT NULL
);
"""


class SQLiteStore(SQLiteLoop, HintStore):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conns: dict[tuple[int, int], sqlite3.Connection] = {}
        self._db()  # create the schema now: a bad path is an error at start, not per hint

    def _db(self) -> sqlite3.Connection:
        key = (os.getpid(), threading.get_ident())
        db = self._conns.get(key)
        if db is None:
            if any(pid != key[0] for pid, _ in self._conns):
                self._conns = {}  # inherited over a fork: never use the parent's connections
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = connect_wal(self.path, 10)
            db.executescript(_SCHEMA + LOOP_SCHEMA)
            self._conns[key] = db
        return db

    def _tx(self):
        return _Immediate(self._db())

    def reserve(self, student, assignment, hint_type, per_assignment, per_type, hold_s):
        now = time.time()
        with self._tx() as db:
            db.execute("DELETE FROM quota WHERE expires IS NOT NULL AND expires < ?", (now,))
            total = db.execute("SELECT COUNT(*) FROM quota WHERE student=? AND assignment=?",
                               (student, assignment)).fetchone()[0]
            typed = db.execute("SELECT COUNT(*) FROM quota WHERE student=? AND assignment=? AND hint_type=?",
                               (student, assignment, hint_type)).fetchone()[0]
            if total >= per_assignment or typed >= per_type:
                return None
            token = uuid.uuid4().hex
            db.execute("INSERT INTO quota VALUES (?,?,?,?,?)", (token, student, assignment, hint_type, now + hold_s))
            return token

    def commit(self, token):
        with self._tx() as db:
            db.execute("UPDATE quota SET expires=NULL WHERE token=?", (token,))

    def release(self, token):
        with self._tx() as db:
            db.execute("DELETE FROM quota WHERE token=? AND expires IS NOT NULL", (token,))

    def delivered(self, student, assignment, hint_type=None):
        sql = "SELECT COUNT(*) FROM quota WHERE expires IS NULL AND student=? AND assignment=?"
        args: tuple = (student, assignment)
        if hint_type is not None:
            sql, args = sql + " AND hint_type=?", args + (hint_type,)
        return self._db().execute(sql, args).fetchone()[0]

    def cache_get(self, key):
        row = self._db().execute("SELECT entry FROM cache WHERE key=?", (key,)).fetchone()
        return CachedHint.model_validate_json(row[0]) if row else None

    def cache_put(self, key, entry):
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO cache VALUES (?,?,?)", (key, entry.model_dump_json(), entry.audit_id))

    def cache_delete(self, key):
        with self._tx() as db:
            db.execute("DELETE FROM cache WHERE key=?", (key,))

    def acquire_slot(self, limit, hold_s):
        now = time.time()
        with self._tx() as db:
            db.execute("DELETE FROM slots WHERE expires < ?", (now,))
            if db.execute("SELECT COUNT(*) FROM slots").fetchone()[0] >= limit:
                return None
            token = uuid.uuid4().hex
            db.execute("INSERT INTO slots VALUES (?,?)", (token, now + hold_s))
            return token

    def release_slot(self, token):
        with self._tx() as db:
            db.execute("DELETE FROM slots WHERE token=?", (token,))

    def breaker_open(self):
        row = self._db().execute("SELECT open_until FROM breaker WHERE id=1").fetchone()
        return bool(row) and row[0] > time.time()

    def breaker_record(self, ok, threshold, reset_s):
        with self._tx() as db:
            row = db.execute("SELECT failures FROM breaker WHERE id=1").fetchone()
            failures = 0 if ok else (row[0] if row else 0) + 1
            open_until = time.time() + reset_s if failures >= threshold else 0.0
            db.execute("INSERT OR REPLACE INTO breaker VALUES (1,?,?)", (failures, open_until))

    def set_disabled(self, assignment, disabled):
        with self._tx() as db:
            if disabled:
                db.execute("INSERT OR IGNORE INTO disabled VALUES (?)", (assignment,))
            else:
                db.execute("DELETE FROM disabled WHERE assignment=?", (assignment,))

    def disabled(self):
        return [r[0] for r in self._db().execute("SELECT assignment FROM disabled ORDER BY assignment")]

    def audit_add(self, record):
        with self._tx() as db:
            cur = db.execute("INSERT INTO audit (at, assignment, outcome, record) VALUES (?,?,?,?)",
                             (record.at, record.assignment, record.outcome.value, "{}"))
            audit_id = int(cur.lastrowid)
            db.execute("UPDATE audit SET record=? WHERE id=?",
                       (record.model_copy(update={"id": audit_id}).model_dump_json(), audit_id))
            return audit_id

    def audit_get(self, audit_id):
        row = self._db().execute("SELECT record FROM audit WHERE id=?", (audit_id,)).fetchone()
        return AuditRecord.model_validate_json(row[0]) if row else None

    def audit_list(self, limit=50, assignment=None):
        sql, args = "SELECT record FROM audit", ()
        if assignment is not None:
            sql, args = sql + " WHERE assignment=?", (assignment,)
        rows = self._db().execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [AuditRecord.model_validate_json(r[0]) for r in rows]

    def block(self, audit_id):
        with self._tx() as db:
            row = db.execute("SELECT record FROM audit WHERE id=?", (audit_id,)).fetchone()
            if not row:
                return False
            record = AuditRecord.model_validate_json(row[0])
            db.execute("UPDATE audit SET record=? WHERE id=?",
                       (record.model_copy(update={"blocked": True}).model_dump_json(), audit_id))
            source = record.source_audit_id or audit_id  # blocking a cache hit blocks its source hint
            db.execute("DELETE FROM cache WHERE audit_id IN (?,?)", (audit_id, source))
            return True

    def close(self):
        for (pid, _), db in self._conns.items():
            if pid == os.getpid():
                db.close()
        self._conns = {}


class _Immediate:
    """BEGIN IMMEDIATE ... COMMIT: the write lock is taken before the reads, so
    check-then-insert (quotas, slots) is atomic across processes."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, *_: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


# ---------------------------------------------------------------------------
# Lua keeps check-and-reserve atomic on the Redis server.
_RESERVE = """
local now, hold = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) or redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + hold, ARGV[5])
redis.call('ZADD', KEYS[2], now + hold, ARGV[5])
return 1
"""
_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[4])
return 1
"""
_BREAKER = """
local failures = 0
if ARGV[1] == '0' then failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
else redis.call('HSET', KEYS[1], 'failures', 0) end
if failures >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'open_until', tonumber(ARGV[3]) + tonumber(ARGV[4]))
else redis.call('HSET', KEYS[1], 'open_until', 0) end
return failures
"""
_INF = "+inf"


class RedisStore(RedisLoop, HintStore):
    def __init__(self, url: str, prefix: str = "xgrader:hints:") -> None:
        from xgrader.extras import require

        self._redis = require("redis", "redis")  # only this store needs it
        self.url = url
        self.p = prefix
        self._client: tuple[int, Any] | None = None
        self._r().ping()  # a wrong URL is an error at start

    def _r(self):
        if self._client is None or self._client[0] != os.getpid():
            client = self._redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5,
                                                decode_responses=True)
            self._client = (os.getpid(), client)
        return self._client[1]

    def _qkeys(self, student: str, assignment: str, hint_type: str | None) -> tuple[str, str]:
        base = f"{self.p}quota:{json.dumps([student, assignment])}"
        return base, f"{base}:{hint_type}"

    def reserve(self, student, assignment, hint_type, per_assignment, per_type, hold_s):
        member = uuid.uuid4().hex
        total, typed = self._qkeys(student, assignment, hint_type)
        ok = self._r().eval(_RESERVE, 2, total, typed, time.time(), hold_s, per_assignment, per_type, member)
        # The token names its keys: nothing else to keep (or leak) per reservation.
        return json.dumps([total, typed, member]) if ok else None

    def commit(self, token):
        total, typed, member = json.loads(token)
        pipe = self._r().pipeline()
        for key in (total, typed):
            pipe.zadd(key, {member: _INF}, xx=True)
        pipe.execute()

    def release(self, token):
        total, typed, member = json.loads(token)
        pipe = self._r().pipeline()
        for key in (total, typed):
            pipe.zscore(key, member)
        scores = pipe.execute()
        pipe = self._r().pipeline()
        for key, score in zip((total, typed), scores):
            if score is not None and score != float("inf"):  # a delivered hint is never given back
                pipe.zrem(key, member)
        pipe.execute()

    def delivered(self, student, assignment, hint_type=None):
        total, typed = self._qkeys(student, assignment, hint_type)
        return int(self._r().zcount(typed if hint_type is not None else total, _INF, _INF))

    def cache_get(self, key):
        raw = self._r().get(f"{self.p}cache:{key}")
        return CachedHint.model_validate_json(raw) if raw else None

    def cache_put(self, key, entry):
        pipe = self._r().pipeline()
        pipe.set(f"{self.p}cache:{key}", entry.model_dump_json())
        pipe.sadd(f"{self.p}cache_by_audit:{entry.audit_id}", key)
        pipe.execute()

    def cache_delete(self, key):
        self._r().delete(f"{self.p}cache:{key}")

    def acquire_slot(self, limit, hold_s):
        token = uuid.uuid4().hex
        ok = self._r().eval(_SLOT, 1, f"{self.p}slots", time.time(), hold_s, limit, token)
        return token if ok else None

    def release_slot(self, token):
        self._r().zrem(f"{self.p}slots", token)

    def breaker_open(self):
        until = self._r().hget(f"{self.p}breaker", "open_until")
        return bool(until) and float(until) > time.time()

    def breaker_record(self, ok, threshold, reset_s):
        self._r().eval(_BREAKER, 1, f"{self.p}breaker", "1" if ok else "0", threshold, time.time(), reset_s)

    def set_disabled(self, assignment, disabled):
        key = f"{self.p}disabled"
        (self._r().sadd if disabled else self._r().srem)(key, assignment)

    def disabled(self):
        return sorted(self._r().smembers(f"{self.p}disabled"))

    def is_disabled(self, assignment):
        return bool(self._r().sismember(f"{self.p}disabled", assignment))

    def audit_add(self, record):
        r = self._r()
        audit_id = int(r.incr(f"{self.p}audit_seq"))
        pipe = r.pipeline()
        pipe.set(f"{self.p}audit:{audit_id}", record.model_copy(update={"id": audit_id}).model_dump_json())
        pipe.zadd(f"{self.p}audit_ids", {str(audit_id): audit_id})
        pipe.zadd(f"{self.p}audit_ids:{record.assignment}", {str(audit_id): audit_id})
        pipe.execute()
        return audit_id

    def audit_get(self, audit_id):
        raw = self._r().get(f"{self.p}audit:{audit_id}")
        return AuditRecord.model_validate_json(raw) if raw else None

    def audit_list(self, limit=50, assignment=None):
        key = f"{self.p}audit_ids" + (f":{assignment}" if assignment is not None else "")
        ids = self._r().zrevrange(key, 0, max(limit, 1) - 1)
        records = [self.audit_get(int(i)) for i in ids]
        return [r for r in records if r is not None]

    def block(self, audit_id):
        record = self.audit_get(audit_id)
        if record is None:
            return False
        r = self._r()
        r.set(f"{self.p}audit:{audit_id}", record.model_copy(update={"blocked": True}).model_dump_json())
        for source in {audit_id, record.source_audit_id or audit_id}:
            for key in r.smembers(f"{self.p}cache_by_audit:{source}"):
                r.delete(f"{self.p}cache:{key}")
            r.delete(f"{self.p}cache_by_audit:{source}")
        return True

    def close(self):
        if self._client is not None and self._client[0] == os.getpid():
            self._client[1].close()
        self._client = None
