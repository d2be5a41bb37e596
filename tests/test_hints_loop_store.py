"""The instructor loop's store contract (deliveries, ratings, escalations,
answers, statistics, deletion) on SQLite and on a real redis-server."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from xgrader.hints.models import AuditRecord, CachedHint, HintOutcome, HintType
from xgrader.hints.records import Delivery, EscalationState, Refused
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


def deliver(store: HintStore, student="s1", assignment="sq", hint_type=HintType.debugging, model="m1",
            cache_key: str | None = None) -> int:
    audit_id = store.audit_add(AuditRecord(assignment=assignment, student=student, outcome=HintOutcome.delivered,
                                           hint_type=hint_type, model=model, hint="h", delivered=True))
    store.delivery_put(Delivery(audit_id=audit_id, student=student, assignment=assignment, hint_type=hint_type,
                                model=model, hint="h", files={"submission.py": "print(1)\n"}))
    if cache_key:
        store.cache_put(cache_key, CachedHint(hint="h", hint_type=hint_type, audit_id=audit_id))
    return audit_id


def test_one_rating_per_hint(store):
    a = deliver(store)
    assert store.rating_get(a) is None
    assert store.rate(a, False).helpful is False
    with pytest.raises(Refused, match="already been rated") as exc:
        store.rate(a, True)
    assert exc.value.status == 409 and store.rating_get(a).helpful is False
    with pytest.raises(Refused) as exc:
        store.rate(99999, True)
    assert exc.value.status == 404 and store.rating_get(99999) is None


def test_escalation_needs_an_unhelpful_rating_once_per_hint_and_a_quota(store):
    helpful, first, second, third, other = (deliver(store) for _ in range(5))
    store.rate(helpful, True)
    with pytest.raises(Refused, match="rated not helpful"):
        store.escalate(helpful, "why?", per_assignment=2)
    with pytest.raises(Refused, match="rated not helpful"):
        store.escalate(first, "unrated", per_assignment=2)
    for a in (first, second, third):
        store.rate(a, False)
    esc = store.escalate(first, "I still do not get it", per_assignment=2)
    assert esc.id and esc.state is EscalationState.waiting and esc.student == "s1" and esc.note.startswith("I still")
    with pytest.raises(Refused, match="already asked") as exc:
        store.escalate(first, "again", per_assignment=2)
    assert exc.value.status == 409
    store.escalate(second, "", per_assignment=2)
    with pytest.raises(Refused, match="the limit") as exc:
        store.escalate(third, "third", per_assignment=2)
    assert exc.value.status == 429 and store.escalation_for(third) is None
    assert store.escalations_count("s1", "sq") == 2
    # Another assignment, another student: their own quota.
    b = deliver(store, assignment="other")
    store.rate(b, False)
    assert store.escalate(b, "", per_assignment=2)
    c = deliver(store, student="s2")
    store.rate(c, False)
    assert store.escalate(c, "", per_assignment=2)
    assert other   # delivered, never rated: not escalated
    assert [e.audit_id for e in store.escalations()] == [first, second, b, c]   # oldest first


def test_claim_release_answer_close(store):
    a = deliver(store)
    store.rate(a, False)
    esc = store.escalate(a, "note", per_assignment=3)
    claimed = store.escalation_act(esc.id, "claim", "ana")
    assert claimed.state is EscalationState.claimed and claimed.claimed_by == "ana"
    for action, text in (("claim", ""), ("answer", "mine"), ("release", ""), ("close", "")):
        with pytest.raises(Refused, match="claimed by ana") as exc:
            store.escalation_act(esc.id, action, "bo", text)
        assert exc.value.status == 409
    assert store.escalation_get(esc.id).claimed_by == "ana"
    store.escalation_act(esc.id, "release", "ana")
    assert store.escalations(states=[EscalationState.waiting])[0].id == esc.id
    with pytest.raises(Refused, match="empty") as exc:
        store.escalation_act(esc.id, "answer", "bo", "   ")
    assert exc.value.status == 400
    answered = store.escalation_act(esc.id, "answer", "bo", "Look at the loop bound.")   # unclaimed: claims
    assert (answered.state, answered.answered_by, answered.claimed_by) == (EscalationState.answered, "bo", "bo")
    assert answered.answered_at >= answered.at
    with pytest.raises(Refused, match="already answered"):
        store.escalation_act(esc.id, "answer", "bo", "twice")
    assert store.escalations(states=[EscalationState.waiting, EscalationState.claimed]) == []
    closed = store.escalation_act(esc.id, "close", "bo")
    assert closed.state is EscalationState.closed and closed.answer == "Look at the loop bound."
    with pytest.raises(Refused, match="unknown action") as exc:
        store.escalation_act(esc.id, "delete", "bo")
    assert exc.value.status == 400
    with pytest.raises(Refused) as exc:
        store.escalation_act(424242, "claim", "bo")
    assert exc.value.status == 404


def test_answers_are_taken_once_for_the_next_feedback(store):
    a, b = deliver(store), deliver(store)
    for x in (a, b):
        store.rate(x, False)
    e1, e2 = store.escalate(a, "1", 5), store.escalate(b, "2", 5)
    assert store.take_answers("s1", "sq") == []
    store.escalation_act(e2.id, "answer", "ana", "second")
    store.escalation_act(e1.id, "answer", "ana", "first")
    taken = store.take_answers("s1", "sq")
    assert [e.answer for e in taken] == ["second", "first"] and all(e.in_feedback_at for e in taken)
    assert store.take_answers("s1", "sq") == [] and store.take_answers("s2", "sq") == []
    assert store.escalation_get(e1.id).in_feedback_at


def test_used_forms_refuse_a_second_use(store):
    assert store.use_form("n1", time.time() + 60)
    assert not store.use_form("n1", time.time() + 60)
    assert store.use_form("n2", time.time() + 60)


def test_stats_per_assignment_type_and_model(store):
    ids = [deliver(store, model="m1") for _ in range(3)] + [deliver(store, hint_type=HintType.planning)]
    ids.append(deliver(store, assignment="other", model="m2"))
    store.rate(ids[0], True)
    store.rate(ids[1], False)
    store.rate(ids[3], True)
    esc = store.escalate(ids[1], "", 5)
    stats = store.loop_stats()
    assert stats.waiting == 1 and stats.claimed == 0 and stats.oldest_open_at == pytest.approx(esc.at)
    groups = {(g.assignment, g.hint_type, g.model): g for g in stats.groups}
    g = groups[("sq", "debugging", "m1")]
    assert (g.delivered, g.helpful, g.unhelpful, g.escalated, g.answered) == (3, 1, 1, 1, 0)
    assert g.helpful_rate == 0.5
    assert groups[("sq", "planning", "m1")].helpful_rate == 1.0
    assert groups[("other", "debugging", "m2")].helpful_rate is None
    store.escalation_act(esc.id, "claim", "ana")
    assert (store.loop_stats().waiting, store.loop_stats().claimed) == (0, 1)
    store.escalation_act(esc.id, "answer", "ana", "x")
    stats = store.loop_stats()
    g = {(g.assignment, g.hint_type, g.model): g for g in stats.groups}[("sq", "debugging", "m1")]
    assert g.answered == 1 and g.answer_seconds >= 0 and stats.waiting == stats.claimed == 0


def test_forget_student_deletes_everything_about_them_and_only_them(store):
    mine = deliver(store, student="gone", cache_key="k-gone")
    store.rate(mine, False)
    store.escalate(mine, "my note", 5)
    store.audit_add(AuditRecord(assignment="sq", student="gone", outcome=HintOutcome.quota))
    token = store.reserve("gone", "sq", "debugging", 5, 5, hold_s=30)
    store.commit(token)
    theirs = deliver(store, student="kept", cache_key="k-kept")
    store.rate(theirs, True)
    counts = store.forget_student("gone")
    assert counts["hints"] == 1 and counts["ratings"] == 1 and counts["escalations"] == 1
    assert counts["decisions"] == 2 and counts["cache"] == 1 and counts["quota"] == 1
    assert store.delivery_get(mine) is None and store.rating_get(mine) is None
    assert store.escalation_for(mine) is None and store.escalations() == []
    assert store.audit_get(mine) is None and [r.student for r in store.audit_list()] == ["kept"]
    assert store.cache_get("k-gone") is None and store.cache_get("k-kept") is not None
    assert store.delivered("gone", "sq") == 0
    assert store.delivery_get(theirs) is not None and store.rating_get(theirs).helpful
    [g] = store.loop_stats().groups
    assert (g.delivered, g.helpful, g.unhelpful, g.escalated) == (1, 1, 0, 0)
    assert store.forget_student("gone") == {**counts, **{k: 0 for k in counts}}


def test_purge_deletes_what_is_older_than_the_cutoff(store):
    old = deliver(store, cache_key="k-old")
    store.rate(old, False)
    store.escalate(old, "", 5)
    time.sleep(0.05)
    cutoff = time.time()
    young = deliver(store)
    counts = store.purge(cutoff)
    assert counts["hints"] == 1 and counts["decisions"] == 1 and counts["escalations"] == 1
    assert store.delivery_get(old) is None and store.audit_get(old) is None and store.cache_get("k-old") is None
    assert store.delivery_get(young) is not None and store.audit_get(young) is not None
    [g] = store.loop_stats().groups
    assert (g.delivered, g.unhelpful, g.escalated) == (1, 0, 0)


def _escalate_in_child(url: str, audit_id: int, results) -> None:
    s = open_store(url)
    try:
        s.escalate(audit_id, "race", per_assignment=2)
        results.put("ok")
    except Refused as exc:
        results.put(exc.status)


def test_escalation_quota_holds_across_processes(store, store_url):
    ids = [deliver(store) for _ in range(6)]
    for a in ids:
        store.rate(a, False)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_escalate_in_child, args=(store_url, a, results)) for a in ids]
    for p in procs:
        p.start()
    got = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sorted(got, key=str) == [429] * 4 + ["ok", "ok"]
    assert store.escalations_count("s1", "sq") == 2
