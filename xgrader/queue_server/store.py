"""The bundled queue's persistent state: SQLite in WAL mode.

Everything a restart must not lose lives here: submissions with their
lease (key, leased_until), results, callback delivery state, uploaded files
and login sessions. Writes go through one connection, one thread at a
time (`writer()`); reads take a connection from a small pool (the server
keeps a thread per client connection).

Pulling is one `UPDATE ... RETURNING` statement in a `BEGIN IMMEDIATE`
transaction: writers are serialised, so two graders can never lease the same
submission at once. The queue length comes from a per-queue count of
pending rows that triggers keep in the same transactions, less the rows
under a live lease: its cost does not grow with the backlog.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from xgrader.sqlite_open import connect_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    lms_callback_url TEXT NOT NULL,
    lms_key TEXT NOT NULL,
    header TEXT NOT NULL,              -- the LMS xqueue_header, verbatim
    body TEXT NOT NULL,                -- the LMS xqueue_body, verbatim
    files TEXT NOT NULL DEFAULT '{}',  -- JSON name -> file token
    created REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending | answered | retired
    key TEXT NOT NULL DEFAULT '',      -- the current pull's submission_key
    leased_until REAL NOT NULL DEFAULT 0,
    pulls INTEGER NOT NULL DEFAULT 0,
    answered REAL,
    result TEXT,                       -- the first accepted grader reply, verbatim
    puts INTEGER NOT NULL DEFAULT 0,   -- accepted put_results (a second one is never delivered)
    delivery TEXT NOT NULL DEFAULT 'none',  -- none | pending | delivered | failed | skipped
    delivery_tries INTEGER NOT NULL DEFAULT 0,
    delivery_next REAL NOT NULL DEFAULT 0,
    delivery_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS sub_pending ON submissions(queue, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS sub_callback ON submissions(lms_callback_url) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS sub_delivery ON submissions(delivery_next) WHERE delivery = 'pending';
-- Leased pending rows (few: one per grader in flight), for the queue length.
CREATE INDEX IF NOT EXISTS sub_leased ON submissions(leased_until) WHERE state = 'pending' AND leased_until > 0;
-- Pending rows per queue, kept by triggers in the same transaction as every
-- change (any writer, any process), rebuilt at every start.
CREATE TABLE IF NOT EXISTS pending_counts (
    queue TEXT PRIMARY KEY,
    n INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS pending_ins AFTER INSERT ON submissions WHEN new.state = 'pending' BEGIN
    INSERT INTO pending_counts(queue, n) VALUES (new.queue, 1) ON CONFLICT(queue) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS pending_del AFTER DELETE ON submissions WHEN old.state = 'pending' BEGIN
    UPDATE pending_counts SET n = n - 1 WHERE queue = old.queue;
END;
CREATE TRIGGER IF NOT EXISTS pending_left AFTER UPDATE OF state, queue ON submissions
    WHEN old.state = 'pending' AND (new.state <> 'pending' OR new.queue <> old.queue) BEGIN
    UPDATE pending_counts SET n = n - 1 WHERE queue = old.queue;
END;
CREATE TRIGGER IF NOT EXISTS pending_came AFTER UPDATE OF state, queue ON submissions
    WHEN new.state = 'pending' AND (old.state <> 'pending' OR new.queue <> old.queue) BEGIN
    INSERT INTO pending_counts(queue, n) VALUES (new.queue, 1) ON CONFLICT(queue) DO UPDATE SET n = n + 1;
END;
CREATE TABLE IF NOT EXISTS files (
    token TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    expires REAL NOT NULL
);
-- Every LMS delivery attempt (the dashboard's submission page lists them).
CREATE TABLE IF NOT EXISTS delivery_attempts (
    submission_id INTEGER NOT NULL,
    at REAL NOT NULL,
    ok INTEGER NOT NULL,
    error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS delivery_attempts_sub ON delivery_attempts(submission_id);
-- Regrades (xgrader regrade --deliver, the dashboard's regrade action): one
-- row per regrade and submission, so a regrade is delivered exactly once.
CREATE TABLE IF NOT EXISTS regrades (
    regrade_id TEXT NOT NULL,
    submission_id INTEGER NOT NULL,
    created REAL NOT NULL,
    kind TEXT NOT NULL,                -- result (a new result delivered) | requeue (graded again by a grader)
    user TEXT NOT NULL DEFAULT '',
    old_result TEXT,
    new_result TEXT,
    new_submission_id INTEGER,         -- requeue: the copy queued for the graders
    PRIMARY KEY (regrade_id, submission_id)
);
CREATE INDEX IF NOT EXISTS regrades_new ON regrades(new_submission_id) WHERE new_submission_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS regrades_sub ON regrades(submission_id);
"""


class _Lease:
    """A pooled connection for one `with` block (a plain class: cheaper than
    a generator context manager, entered ~5 times per submission)."""

    __slots__ = ("store", "c")

    def __init__(self, store: "Store") -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self.store
        try:
            c = store._idle.pop()
        except IndexError:
            c = store._open()
            with store._lock:
                store._all.append(c)
        self.c = c
        return c

    def __exit__(self, *exc: object) -> None:
        c, store = self.c, self.store
        if c.in_transaction:
            c.rollback()
        if len(store._idle) < store._pool_size:
            store._idle.append(c)
        else:
            with store._lock:
                store._all.remove(c)
            c.close()


class _WriteLease:
    __slots__ = ("store",)

    def __init__(self, store: "Store") -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self.store
        store._wlock.acquire()
        try:
            if store._w is None:
                store._w = store._open()
                with store._lock:
                    store._all.append(store._w)
        except BaseException:
            store._wlock.release()
            raise
        return store._w

    def __exit__(self, *exc: object) -> None:
        store = self.store
        try:
            if store._w is not None and store._w.in_transaction:
                store._w.rollback()
        finally:
            store._wlock.release()


@dataclass(frozen=True)
class Pulled:
    id: int
    key: str
    body: str
    files: dict[str, str]  # name -> token


@dataclass(frozen=True)
class Delivery:
    id: int
    callback_url: str
    header: str
    result: str
    tries: int


class PutStatus:
    OK = "ok"
    DUPLICATE = "duplicate"     # accepted, not delivered again
    NO_SUCH = "no_such"
    BAD_KEY = "bad_key"


class Store:
    def __init__(self, path: Path | str, pool_size: int = 16) -> None:
        self.path = str(path)
        self._idle: list[sqlite3.Connection] = []  # LIFO; append/pop are atomic
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pool_size = pool_size
        self._wlock = threading.Lock()
        self._w: sqlite3.Connection | None = None
        with self.conn() as c:
            c.executescript(SCHEMA)
            # The counts are derived data: recomputed at start, so a database
            # from before they existed (or edited by hand) starts right.
            c.execute("BEGIN IMMEDIATE")
            c.execute("DELETE FROM pending_counts")
            c.execute("INSERT INTO pending_counts(queue, n) SELECT queue, count(*) FROM submissions"
                      " WHERE state='pending' GROUP BY queue")
            c.execute("COMMIT")

    # -- connections ---------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        return connect_wal(self.path, 30)

    def conn(self) -> "_Lease":
        """`with store.conn() as c:` a pooled connection; a transaction left
        open is rolled back when it comes back."""
        return _Lease(self)

    def writer(self) -> "_WriteLease":
        """`with store.writer() as c:` the one connection this process writes
        through, one thread at a time. Writers in a process queue on a
        Python lock (woken at once when the previous one is done) instead of
        meeting in SQLite, whose busy handler sleeps and retries, and the
        writer's page cache stays valid (no other connection of this
        process writes). SQLite's own locking still orders this process
        against any other."""
        return _WriteLease(self)

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._all.clear()

    # -- LMS side ------------------------------------------------------------
    def submit(self, queue: str, callback_url: str, lms_key: str, header: str, body: str,
               files: dict[str, tuple[str, bytes]] | None = None) -> tuple[int, int]:
        """Store a submission (and its files); retire earlier unanswered ones
        from the same callback URL. Returns (id, queue length)."""
        now = time.time()
        with self.writer() as c:
            c.execute("BEGIN IMMEDIATE")
            tokens: dict[str, str] = {}
            for field, (name, data) in (files or {}).items():
                token = secrets.token_hex(16)
                c.execute("INSERT INTO files(token, name, data) VALUES (?, ?, ?)", (token, name, data))
                tokens[field] = token
            c.execute("UPDATE submissions SET state='retired' WHERE state='pending' AND lms_callback_url=?",
                      (callback_url,))
            cur = c.execute(
                "INSERT INTO submissions(queue, lms_callback_url, lms_key, header, body, files, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (queue, callback_url, lms_key, header, body, json.dumps(tokens), now))
            sid = int(cur.lastrowid)
            length = self._length(c, queue, now)
            c.execute("COMMIT")
        return sid, length

    # -- grader side ---------------------------------------------------------
    @staticmethod
    def _length(c: sqlite3.Connection, queue: str, now: float) -> int:
        """Pending, unleased submissions: the trigger-kept pending count less
        the pending rows under a live lease (found through sub_leased, so the
        cost follows the graders in flight, not the backlog)."""
        row = c.execute(
            "SELECT coalesce((SELECT n FROM pending_counts WHERE queue=?1), 0) - (SELECT count(*) FROM submissions"
            " INDEXED BY sub_leased WHERE state='pending' AND leased_until>0 AND leased_until>?2 AND queue=?1)",
            (queue, now)).fetchone()
        return int(row[0])

    def queue_length(self, queue: str) -> int:
        with self.conn() as c:
            return self._length(c, queue, time.time())

    def pull(self, queue: str, lease_s: float) -> Pulled | None:
        """Lease the oldest pending, unleased submission under a new key."""
        now = time.time()
        key = secrets.token_hex(16)
        with self.writer() as c:
            # IMMEDIATE: take the write lock before reading, so the choice and
            # the lease are one step for every concurrent puller.
            c.execute("BEGIN IMMEDIATE")
            row = c.execute(
                "UPDATE submissions SET key=?, leased_until=?, pulls=pulls+1 WHERE id = ("
                " SELECT id FROM submissions WHERE state='pending' AND queue=? AND leased_until<=?"
                " ORDER BY id LIMIT 1) RETURNING id, body, files",
                (key, now + lease_s, queue, now)).fetchone()
            c.execute("COMMIT")
        if row is None:
            return None
        return Pulled(id=row[0], key=key, body=row[1], files=json.loads(row[2]))

    def put_result(self, sid: int, key: str, result: str,
                   handoff_s: float = 30.0) -> tuple[str, Delivery | None]:
        """Record a grader's reply. The first accepted reply is due for
        delivery to the LMS and returned, for the caller to hand to the
        deliverer directly; its `delivery_next` is set `handoff_s` ahead so
        the deliverer's periodic scan only finds it if that handoff was lost
        (a crash). A second reply with the same key is accepted and counted
        but never delivered again."""
        now = time.time()
        delivery = None
        with self.writer() as c:
            c.execute("BEGIN IMMEDIATE")
            row = c.execute("SELECT key, state, result IS NOT NULL, lms_callback_url, header"
                            " FROM submissions WHERE id=?", (sid,)).fetchone()
            if row is None:
                c.execute("ROLLBACK")
                return PutStatus.NO_SUCH, None
            current, state, has_result, callback_url, header = row
            if not current or not secrets.compare_digest(current, key):
                c.execute("ROLLBACK")
                return PutStatus.BAD_KEY, None
            if state == "pending":
                c.execute("UPDATE submissions SET state='answered', answered=?, result=?, puts=puts+1,"
                          " leased_until=0, delivery='pending', delivery_next=? WHERE id=?",
                          (now, result, now + handoff_s, sid))
                delivery = Delivery(sid, callback_url, header, result, 0)
                status = PutStatus.OK
            elif state == "retired" and not has_result:
                # Superseded by a newer submission from the same LMS callback:
                # keep the reply for the record, do not deliver it.
                c.execute("UPDATE submissions SET answered=?, result=?, puts=puts+1, delivery='skipped',"
                          " delivery_error='retired: a newer submission replaced it' WHERE id=?",
                          (now, result, sid))
                status = PutStatus.OK
            else:
                c.execute("UPDATE submissions SET puts=puts+1 WHERE id=?", (sid,))
                status = PutStatus.DUPLICATE
            c.execute("COMMIT")
        return status, delivery

    # -- delivery ------------------------------------------------------------
    def due_deliveries(self, limit: int = 64, exclude: set[int] | frozenset[int] = frozenset()) -> list[Delivery]:
        now = time.time()
        with self.conn() as c:
            rows = c.execute(
                "SELECT id, lms_callback_url, header, result, delivery_tries FROM submissions"
                " WHERE delivery='pending' AND delivery_next<=? ORDER BY delivery_next LIMIT ?",
                (now, limit + len(exclude))).fetchall()
        return [Delivery(*r) for r in rows if r[0] not in exclude][:limit]

    def deliveries_due_now(self) -> None:
        """At start-up: every pending delivery is due (handoffs of a previous
        run were lost with it)."""
        with self.writer() as c:
            c.execute("UPDATE submissions SET delivery_next=0 WHERE delivery='pending'")

    def next_delivery_at(self) -> float | None:
        with self.conn() as c:
            row = c.execute("SELECT min(delivery_next) FROM submissions WHERE delivery='pending'").fetchone()
        return row[0]

    def delivery_done(self, sid: int, ok: bool, error: str, retry_at: float | None) -> None:
        with self.writer() as c:
            if ok:
                state = "delivered"
            elif retry_at is None:
                state = "failed"
            else:
                state = "pending"
            c.execute("UPDATE submissions SET delivery=?, delivery_tries=delivery_tries+1,"
                      " delivery_next=?, delivery_error=? WHERE id=?",
                      (state, retry_at or 0, error[:500], sid))
            c.execute("INSERT INTO delivery_attempts(submission_id, at, ok, error) VALUES (?, ?, ?, ?)",
                      (sid, time.time(), int(ok), error[:500]))

    # -- files ---------------------------------------------------------------
    def file(self, token: str) -> tuple[str, bytes] | None:
        with self.conn() as c:
            row = c.execute("SELECT name, data FROM files WHERE token=?", (token,)).fetchone()
        return (row[0], bytes(row[1])) if row else None

    def add_file(self, name: str, data: bytes) -> str:
        token = secrets.token_hex(16)
        with self.writer() as c:
            c.execute("INSERT INTO files(token, name, data) VALUES (?, ?, ?)", (token, name, data))
        return token

    # -- sessions ------------------------------------------------------------
    def new_session(self, user: str, ttl_s: float) -> tuple[str, float]:
        token = secrets.token_hex(20)
        expires = time.time() + ttl_s
        with self.writer() as c:
            c.execute("INSERT INTO sessions(token, user, expires) VALUES (?, ?, ?)", (token, user, expires))
            c.execute("DELETE FROM sessions WHERE expires < ?", (time.time(),))
        return token, expires

    def session(self, token: str) -> tuple[str, float] | None:
        with self.conn() as c:
            row = c.execute("SELECT user, expires FROM sessions WHERE token=?", (token,)).fetchone()
        return (row[0], row[1]) if row else None

    def drop_session(self, token: str) -> None:
        with self.writer() as c:
            c.execute("DELETE FROM sessions WHERE token=?", (token,))

    # -- read-only views -----------------------------------------------------
    def overview(self, limit: int = 200) -> tuple[list[tuple], list[tuple]]:
        """(per-queue counts, latest submissions) for the dashboard and `queue status`."""
        now = time.time()
        with self.conn() as c:
            counts = c.execute(
                "SELECT queue,"
                " sum(state='pending' AND leased_until<=?), sum(state='pending' AND leased_until>?),"
                " sum(state='answered'), sum(state='retired'),"
                " sum(delivery='delivered'), sum(delivery='failed')"
                " FROM submissions GROUP BY queue ORDER BY queue", (now, now)).fetchall()
            rows = c.execute(
                "SELECT id, queue, lms_key, state, leased_until, pulls, puts, result, delivery,"
                " delivery_tries, delivery_error, created FROM submissions ORDER BY id DESC LIMIT ?",
                (limit,)).fetchall()
        return counts, rows

