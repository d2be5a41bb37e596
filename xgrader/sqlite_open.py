"""Opening an embedded SQLite store in WAL mode, safely under concurrency.

Switching a fresh database file to WAL needs a moment alone with the file, and
SQLite answers "database is locked" at once (without waiting out the busy
timeout) when another connection is opening or writing it at that instant.
Several replicas or threads opening a new store together hit this, so the
switch is retried until the timeout; once a file is in WAL mode it stays so,
and later openers only read the mode.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def connect_wal(path: str | Path, timeout_s: float) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit) in WAL mode with
    synchronous=NORMAL (durable across process crashes) and a busy timeout of
    `timeout_s`. Raises sqlite3.Error if the file stays locked that long."""
    conn = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        deadline = time.monotonic() + timeout_s
        delay = 0.005
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        conn.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn
