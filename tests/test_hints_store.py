"""The hint store contract, on SQLite and on a real redis-server."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from xgrader.hints.models import AuditRecord, CachedHint, HintOutcome, HintType
from xgrader.hints.store import HintStore, open_store


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hints.db'}"
    return request.getfixturevalue("redis_url")


@pytest.fixture
def store(store_url) -> HintStore:
    s = open_store(store_url)
    yield s
    s.close()


def test_quota_counts_only_delivered_and_limits_both_ways(store):
    a = store.reserve("s1", "sq", "debugging", 3, 2, hold_s=30)
    b = store.reserve("s1", "sq", "debugging", 3, 2, hold_s=30)
    assert a and b
    assert store.reserve("s1", "sq", "debugging", 3, 2, hold_s=30) is None   # per type: 2 held
    store.release(b)                                                          # not delivered: back
    store.commit(a)
    store.release(a)                                                          # delivered stays delivered
    assert store.delivered("s1", "sq") == 1 and store.delivered("s1", "sq", "debugging") == 1
    c = store.reserve("s1", "sq", "debugging", 3, 2, hold_s=30)
    d = store.reserve("s1", "sq", "planning", 3, 2, hold_s=30)
    assert c and d
    assert store.reserve("s1", "sq", "optimisation", 3, 2, hold_s=30) is None  # overall: 3 held
    # Another student, another assignment: their own counters.
    assert store.reserve("s2", "sq", "debugging", 3, 2, hold_s=30)
    assert store.reserve("s1", "other", "debugging", 3, 2, hold_s=30)
    assert store.delivered("s2", "sq") == 0


def test_lapsed_reservation_is_given_back(store):
    assert store.reserve("s1", "sq", "planning", 1, 1, hold_s=0.2)
    assert store.reserve("s1", "sq", "planning", 1, 1, hold_s=0.2) is None
    time.sleep(0.3)   # a killed child never commits nor releases
    assert store.reserve("s1", "sq", "planning", 1, 1, hold_s=30)


def _reserve_in_child(url: str, results) -> None:
    s = open_store(url)
    results.put(s.reserve("crowd", "sq", "debugging", 5, 5, hold_s=30) is not None)


def test_reservations_are_atomic_across_processes(store_url):
    open_store(store_url).close()  # schema in place before the crowd arrives
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_reserve_in_child, args=(store_url, results)) for _ in range(12)]
    for p in procs:
        p.start()
    got = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sum(got) == 5


def test_cache_and_block(store):
    rec = AuditRecord(assignment="sq", outcome=HintOutcome.delivered, hint="h", delivered=True)
    audit_id = store.audit_add(rec)
    store.cache_put("k1", CachedHint(hint="h", hint_type=HintType.debugging, audit_id=audit_id))
    assert store.cache_get("k1").hint == "h"
    assert store.cache_get("nope") is None
    # A cache hit's own record points at the source; blocking it blocks the source hint.
    hit = store.audit_add(AuditRecord(assignment="sq", outcome=HintOutcome.cached, source_audit_id=audit_id))
    assert store.block(hit)
    assert store.cache_get("k1") is None
    assert store.audit_get(hit).blocked
    assert not store.block(99999)


def test_audit_list_newest_first_and_by_assignment(store):
    ids = [store.audit_add(AuditRecord(assignment=a, outcome=HintOutcome.quota)) for a in ("a", "b", "a")]
    assert [r.id for r in store.audit_list()] == ids[::-1]
    assert [r.id for r in store.audit_list(assignment="a")] == [ids[2], ids[0]]
    assert [r.id for r in store.audit_list(limit=1)] == [ids[2]]
    assert store.audit_get(ids[1]).assignment == "b"


def test_slots_bound_concurrency_and_lapse(store):
    a = store.acquire_slot(2, hold_s=30)
    b = store.acquire_slot(2, hold_s=0.2)
    assert a and b and store.acquire_slot(2, hold_s=30) is None
    store.release_slot(a)
    c = store.acquire_slot(2, hold_s=30)
    assert c and store.acquire_slot(2, hold_s=30) is None
    time.sleep(0.3)   # b's holder died: its slot lapses
    assert store.acquire_slot(2, hold_s=30)


def test_breaker_opens_after_threshold_and_closes_on_success(store):
    assert not store.breaker_open()
    store.breaker_record(False, threshold=2, reset_s=30)
    assert not store.breaker_open()
    store.breaker_record(False, threshold=2, reset_s=30)
    assert store.breaker_open()
    store.breaker_record(True, threshold=2, reset_s=30)
    assert not store.breaker_open()
    store.breaker_record(False, threshold=1, reset_s=0.2)
    assert store.breaker_open()
    time.sleep(0.3)
    assert not store.breaker_open()   # half-open: the next call is tried


def test_disable_switch(store):
    store.set_disabled("sq", True)
    store.set_disabled("sq", True)
    assert store.is_disabled("sq") and store.disabled() == ["sq"]
    store.set_disabled("sq", False)
    assert not store.is_disabled("sq") and store.disabled() == []


def test_bad_url_is_a_clear_error():
    with pytest.raises(ValueError, match="sqlite:///"):
        open_store("mysql://x")
