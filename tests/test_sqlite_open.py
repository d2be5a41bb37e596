"""Opening an embedded SQLite store while another process or replica holds the
file's write lock (as when replicas start together on a fresh store): SQLite
refuses the switch to WAL at once instead of waiting, so every store must wait
for the lock and end up in WAL mode."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from xgrader.hints.store import SQLiteStore
from xgrader.ledger.store import Ledger
from xgrader.queue_server.store import Store
from xgrader.sqlite_open import connect_wal


def _open_connect_wal(path: Path) -> None:
    connect_wal(path, 5).close()


def _open_ledger(path: Path) -> None:
    ledger = Ledger(f"sqlite:///{path}")
    ledger.migrate()
    ledger.db.close()


def _open_queue_store(path: Path) -> None:
    Store(path)


def _open_hint_store(path: Path) -> None:
    SQLiteStore(path)


@pytest.mark.parametrize("open_store", [_open_connect_wal, _open_ledger, _open_queue_store, _open_hint_store])
def test_store_opens_while_another_writer_holds_a_fresh_file(tmp_path: Path, open_store) -> None:
    path = tmp_path / "store.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE other_replica(x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO other_replica VALUES (1)")
    # Plain sqlite3 proves the situation: the switch to WAL fails at once.
    probe = sqlite3.connect(path, timeout=5, isolation_level=None)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        probe.execute("PRAGMA journal_mode=WAL")
    assert time.monotonic() - started < 1
    probe.close()

    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    try:
        open_store(path)
    finally:
        release.join()
    other.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert check.execute("SELECT x FROM other_replica").fetchall() == [(1,)]
    check.close()


def test_connect_wal_gives_up_after_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE t(x)")
    other.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        connect_wal(path, 0.5)
    assert 0.3 < time.monotonic() - started < 3
    other.execute("COMMIT")
