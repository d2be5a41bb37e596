"""The pull loop against what real queue servers do, with the real client
over real HTTP (tests/support/daemon.py's MiniXQueue, switched into each
behaviour) and real forked children:

- a put_result answered 500 after the server passed it on, and the
  submission served again: the same result posted again, graded once;
- edx-submissions: a submission served again with the same key while it is
  being graded (not graded again), UUID keys (score as a fraction), no
  get_queuelen/ (asked once);
- readiness: an unknown queue name, a refused login (bounded, then exit 3),
  a queue server that is down (retried), a sandbox backend that cannot
  start (no pulls; bounded, then exit 4);
- a clean shutdown counts only jobs being graded.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import requests
import structlog

from tests.support.daemon import MiniXQueue, NoSandbox, stop_when
from tests.test_daemon_supervisor import BODY, Recorder, settings_for
from xgrader.backends.base import SandboxError
from xgrader.client import XQueueClient
from xgrader.daemon import Daemon
from xgrader.daemon.child import JobContext
from xgrader.daemon.messages import ChildReport, Reporter
from xgrader.hooks import Hooks
from xgrader.metrics import MetricsHooks, start_metrics_server
from xgrader.wire import GraderReply

REPLY = GraderReply(correct=False, score=2, msg="<div>2 of 3</div>")


class Calls(Recorder):
    """Recorder plus the hooks these tests look at."""

    def on_pull(self, queue, result):
        self.calls.append(("pull", result))

    def on_reposted(self, queue):
        self.calls.append(("reposted",))

    def on_put_failed(self, queue, status):
        self.calls.append(("put_failed", status))

    def on_poison(self, queue, reason):
        self.calls.append(("poison", reason))

    def on_busy(self, queue, seconds):
        self.calls.append(("busy", seconds))

    def count(self, name: str, *rest) -> int:
        return sum(1 for c in self.calls if c[0] == name and (not rest or c[1:] == rest))


def counting_job(tries: Path, *, seconds: float = 0.0, reply: GraderReply = REPLY, max_score: float = 3):
    def job(ctx: JobContext, reporter: Reporter) -> None:
        with open(tries, "a") as fh:
            fh.write(f"{ctx.submission_id}\n")
        time.sleep(seconds)
        reporter.report(ChildReport(outcome="graded", reply=reply.to_body(), grade_outcome="partial",
                                    score=reply.score, max_score=max_score))
    return job


def daemon_for(server: MiniXQueue, job, hooks: Hooks | None = None, backend=None, **settings) -> Daemon:
    values = dict(queue_user="u", queue_password="p")
    values.update(settings)
    s = settings_for(server.url, **values)
    return Daemon(s, XQueueClient(s, hooks=hooks), backend or NoSandbox(), hooks, job=job)


def run(daemon: Daemon, until, timeout: float = 20.0) -> int:
    cancel = stop_when(until, timeout)
    try:
        return daemon.run()
    finally:
        cancel.set()


def lines(tries: Path) -> list[str]:
    return tries.read_text().split() if tries.exists() else []


@pytest.fixture(autouse=True)
def default_logging():
    """structlog's defaults (an earlier test may have configured a level
    filter), so capture_logs sees every event."""
    structlog.reset_defaults()
    yield


@pytest.fixture
def mini():
    server = MiniXQueue().start()
    yield server
    server.stop()


# -- re-serves -------------------------------------------------------------------------

def test_put_result_500_after_delivery_reposts_the_known_result_graded_once(mini, tmp_path):
    """Legacy xqueue with several workers on SQLite: put_result reaches the
    LMS, then fails with 500 and the submission is served again (new key).
    Each time the same result goes back; never "could not be graded", even
    with more re-serves than max_attempts; one grading."""
    mini.lease_s = 0.3
    mini.fail_puts = 3
    tries = tmp_path / "tries"
    hooks = Calls()
    mini.submit("q", BODY)
    daemon = daemon_for(mini, counting_job(tries), hooks, max_attempts=2)
    code = run(daemon, lambda: mini.answered() == 1)
    (entry,) = mini.entries
    assert code == 0 and lines(tries) == ["1"]                       # graded once
    assert entry.pulls == 4 and entry.delivered == [json.loads(REPLY.to_body())] * 4
    assert entry.results == [json.loads(REPLY.to_body())]             # no "could not be graded"
    assert hooks.count("reposted") == 3 and hooks.count("put_failed", "500") == 3
    assert hooks.count("pull", "cached") == 3 and hooks.count("poison") == 0
    assert hooks.count("infra") == 0


def test_edx_same_key_reserved_while_grading_is_not_graded_again_nor_counted(mini, tmp_path):
    """edx-submissions serves an unanswered pull again, with the same key, on
    every pull once its lease ran out: one grading, one put_result, posted
    as a fraction (UUID keys); get_queuelen/ (a 404 there) asked once."""
    mini.lease_s = 0.1
    mini.same_key = True
    mini.no_queuelen = True
    tries = tmp_path / "tries"
    hooks = Calls()
    mini.submit("q", BODY)
    daemon = daemon_for(mini, counting_job(tries, seconds=1.5), hooks, max_attempts=1, job_timeout_s=10)
    code = run(daemon, lambda: mini.answered() == 1)
    (entry,) = mini.entries
    assert code == 0 and lines(tries) == ["1"]
    assert entry.pulls >= 3 and entry.rejected == 0                   # served again while grading
    assert entry.delivered == [{"correct": False, "score": pytest.approx(2 / 3), "msg": "<div>2 of 3</div>"}]
    assert hooks.count("pull", "in_flight") == entry.pulls - 1 and hooks.count("infra") == 0
    assert mini.requests.count("/xqueue/get_queuelen/") == 1
    assert sum(c[1] for c in hooks.calls if c[0] == "busy") == pytest.approx(1.5, abs=0.6)


def test_legacy_new_key_while_grading_is_the_key_posted_with(mini, tmp_path):
    mini.lease_s = 0.2
    tries = tmp_path / "tries"
    mini.submit("q", BODY)
    daemon = daemon_for(mini, counting_job(tries, seconds=1.0), max_attempts=1, job_timeout_s=10)
    code = run(daemon, lambda: mini.answered() == 1)
    (entry,) = mini.entries
    assert code == 0 and lines(tries) == ["1"] and entry.pulls >= 2
    assert entry.rejected == 0 and entry.results == [json.loads(REPLY.to_body())]   # points: 2


@pytest.mark.parametrize("setting, same_key, score", [
    ("auto", False, 2), ("auto", True, 2 / 3), ("points", True, 2), ("fraction", False, 2 / 3)])
def test_score_format(mini, tmp_path, setting, same_key, score):
    mini.same_key = same_key
    mini.submit("q", BODY)
    with structlog.testing.capture_logs() as logs:
        daemon = daemon_for(mini, counting_job(tmp_path / "tries"), score_format=setting)
        assert run(daemon, lambda: mini.answered() == 1) == 0
    assert mini.entries[0].results[0]["score"] == pytest.approx(score)
    (chosen,) = [e for e in logs if e["event"] == "score_format"]
    assert chosen["score_format"] == ("points" if score == 2 else "fraction") and chosen["reason"]


def test_score_format_per_queue(mini, tmp_path):
    mini.submit("a", BODY)
    mini.submit("b", BODY)
    daemon = daemon_for(mini, counting_job(tmp_path / "tries"), queue_names=["a", "b"],
                        score_formats={"b": "fraction"})
    assert run(daemon, lambda: mini.answered() == 2) == 0
    assert [e.results[0]["score"] for e in mini.entries] == [2, pytest.approx(2 / 3)]


def test_attempts_count_grading_failures_only_and_poison_carries_reasons(mini, tmp_path):
    """Two crashes and a timeout: could-not-grade, the reasons logged and counted."""
    tries = tmp_path / "tries"

    def flaky(ctx, reporter):
        with open(tries, "a") as fh:
            fh.write("x\n")
        n = len(lines(tries))
        if n == 3:
            time.sleep(60)
        reporter.report(ChildReport(outcome="infra", infra_kind="sandbox_start", detail="no sandbox"))

    hooks = Calls()
    mini.submit("q", BODY)
    with structlog.testing.capture_logs() as logs:
        code = run(daemon_for(mini, flaky, hooks, max_attempts=3, job_timeout_s=0.5),
                   lambda: mini.answered() == 1)
    assert code == 0 and mini.entries[0].results[0]["correct"] is None and mini.entries[0].pulls == 1
    (poison,) = [e for e in logs if e["event"] == "poison_submission"]
    assert poison["attempts"] == 3 and poison["reasons"] == ["sandbox_start", "sandbox_start", "timeout"]
    assert hooks.calls.count(("poison", "sandbox_start")) == 1


# -- readiness -----------------------------------------------------------------------

def test_unknown_queue_name_is_not_ready_with_the_reason(mini, tmp_path):
    mini.queues = {"q"}
    metrics = MetricsHooks()
    server = start_metrics_server(settings_for(mini.url, metrics_port=0), metrics, metrics.readiness)
    mini.submit("q", BODY)
    daemon = daemon_for(mini, counting_job(tmp_path / "tries"), metrics, queue_names=["q", "nosuchqueue"])
    seen: list[requests.Response] = []

    def told() -> bool:
        r = requests.get(f"http://127.0.0.1:{server.port}/readyz", timeout=5)
        seen.append(r)
        return mini.answered() == 1 and "nosuchqueue" in r.text

    try:
        assert run(daemon, told) == 0
        text = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
    finally:
        server.stop()
    ready = seen[-1]
    assert ready.status_code == 503
    assert ready.json()["detail"] in (      # whichever call asked first: get_queuelen or get_submission
        "queue 'nosuchqueue' unknown to the server: Queue 'nosuchqueue' not found",
        "queue 'nosuchqueue' unknown to the server: Valid queue names are: q")
    assert 'xgrader_queue_served{queue="nosuchqueue"} 0.0' in text and 'xgrader_queue_served{queue="q"} 1.0' in text
    assert mini.entries[0].results   # the known queue is served meanwhile


def test_refused_login_gives_up_after_the_bound_with_one_clear_line(mini, tmp_path):
    mini.password = "right"
    mini.login_refusal = ("Incorrect login credentials: the account named in the request does not exist "
                          "or its password does not match the one stored for it on this server, and "
                          "several more words follow so that any cut falls in the middle of a sentence "
                          "rather than at its end, which is where a careless truncation would split "
                          "somewhere between characters")
    mini.submit("q", BODY)
    hooks = Calls()
    with structlog.testing.capture_logs() as logs:
        daemon = daemon_for(mini, counting_job(tmp_path / "tries"), hooks, login_max_refusals=2)
        started = time.monotonic()
        code = run(daemon, lambda: False, timeout=30)
    assert code == 3 and time.monotonic() - started < 15
    errors = [e for e in logs if e["log_level"] in ("error", "critical")]
    assert [e["event"] for e in errors] == ["login_refused_giving_up"]
    assert "refused the login 2 times" in errors[0]["error"]
    assert mini.entries[0].pulls == 0
    # No error cut mid-word: every word logged is a word of the server's answer.
    words = set(mini.login_refusal.replace(":", " ").replace(",", " ").split())
    for event in [e for e in logs if e["event"] == "login_refused"]:
        text = event["error"].split("refused: ", 1)[1].removesuffix("...")
        assert all(w.strip(",:") in words for w in text.split()), event["error"]


def test_a_queue_that_is_down_is_retried_not_given_up(tmp_path):
    """Connection refused at start-up is transient: far more attempts than
    login_max_refusals, then the queue comes up and the daemon grades."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/xqueue/"
    s_ = settings_for(url, queue_user="u", queue_password="p", login_max_refusals=1)
    daemon = Daemon(s_, XQueueClient(s_), NoSandbox(), job=counting_job(tmp_path / "tries"))
    server: list[MiniXQueue] = []
    try:
        with structlog.testing.capture_logs() as logs:
            def up_later() -> bool:
                failed = sum(1 for e in list(logs) if e["event"] == "login_failed")
                if not server and failed >= 3:   # 3 attempts, login_max_refusals is 1
                    mini = MiniXQueue(port=port).start()
                    mini.submit("q", BODY)
                    server.append(mini)
                return bool(server) and server[0].answered() == 1

            code = run(daemon, up_later)
    finally:
        for mini in server:
            mini.stop()
    assert code == 0 and server and server[0].entries[0].results
    assert sum(1 for e in logs if e["event"] == "login_failed") >= 3
    assert not any(e["event"] == "login_refused" for e in logs)


class FlakyBackend(NoSandbox):
    """check() fails until `ok` exists."""

    def __init__(self, ok: Path) -> None:
        super().__init__()
        self.ok = ok
        self.checks = 0

    def check(self) -> None:
        self.checks += 1
        if not self.ok.exists():
            raise SandboxError("bwrap: setpriv: setresuid failed: Operation not permitted")


def test_no_pulls_while_the_backend_cannot_start_then_grades_when_it_can(mini, tmp_path, monkeypatch):
    from xgrader.daemon import loop

    monkeypatch.setattr(loop, "BACKEND_RETRY_S", 0.2)
    ok = tmp_path / "ok"
    backend = FlakyBackend(ok)
    mini.submit("q", BODY)
    metrics = MetricsHooks()
    daemon = daemon_for(mini, counting_job(tmp_path / "tries"), metrics, backend=backend)
    waited: list[bool] = []

    def later() -> bool:
        if not ok.exists() and backend.checks >= 4:
            waited.append(mini.entries[0].pulls == 0 and not metrics.readiness()[0]
                          and "setresuid" in metrics.readiness()[1])
            ok.write_text("")
        return mini.answered() == 1

    assert run(daemon, later) == 0
    assert waited == [True] and mini.entries[0].pulls == 1 and mini.entries[0].results


def test_a_backend_that_never_starts_exits_4_with_one_clear_line(mini, tmp_path, monkeypatch):
    from xgrader.daemon import loop

    monkeypatch.setattr(loop, "BACKEND_RETRY_S", 0.2)
    mini.submit("q", BODY)
    with structlog.testing.capture_logs() as logs:
        daemon = daemon_for(mini, counting_job(tmp_path / "tries"), backend=FlakyBackend(tmp_path / "never"),
                            backend_unready_exit_s=1.0)
        code = run(daemon, lambda: False, timeout=20)
    assert code == 4 and mini.entries[0].pulls == 0
    errors = [e for e in logs if e["log_level"] in ("error", "critical")]
    assert [e["event"] for e in errors] == ["sandbox_backend_unusable"]
    assert "setresuid failed" in errors[0]["error"] and "nothing was pulled" in errors[0]["error"]


def test_a_backend_failing_while_running_stops_the_pulls(mini, tmp_path, monkeypatch):
    """The check runs every 30 s while the daemon works; once it fails no
    submission is pulled (none answered "could not be graded")."""
    from xgrader.daemon import loop

    monkeypatch.setattr(loop, "BACKEND_CHECK_EVERY_S", 0.2)
    monkeypatch.setattr(loop, "BACKEND_RETRY_S", 0.2)
    ok = tmp_path / "ok"
    ok.write_text("")
    backend = FlakyBackend(ok)
    mini.submit("q", BODY)
    daemon = daemon_for(mini, counting_job(tmp_path / "tries"), backend=backend)
    state: dict = {}

    def script() -> bool:
        if mini.answered() == 1 and "broken_at" not in state:
            ok.unlink()
            state["broken_at"] = backend.checks
        if "broken_at" in state and "submitted" not in state and backend.checks >= state["broken_at"] + 2:
            mini.submit("q", BODY)
            state["submitted"] = time.monotonic()
        return "submitted" in state and time.monotonic() - state["submitted"] > 1.0

    assert run(daemon, script) == 0
    assert mini.entries[1].pulls == 0 and not mini.entries[1].results


# -- shutdown ----------------------------------------------------------------------------

def test_shutdown_draining_counts_only_jobs_being_graded(mini, tmp_path):
    daemon = daemon_for(mini, counting_job(tmp_path / "tries"))
    with structlog.testing.capture_logs() as logs:
        code = run(daemon, lambda: len(daemon.supervisor.ready()) == 2)   # two ready children, no job
    (draining,) = [e for e in logs if e["event"] == "shutdown_draining"]
    assert code == 0 and draining["in_flight"] == 0


# -- start-up checks -------------------------------------------------------------------

@pytest.mark.parametrize("settings, warned", [
    ({"job_timeout_s": 120}, True),                              # legacy xqueue's 60 s lease
    ({"job_timeout_s": 50}, False),
    ({"job_timeout_s": 120, "queue_lease_s": 300}, False),       # the server's lease, stated
])
def test_job_timeout_is_checked_against_the_lease(mini, tmp_path, settings, warned):
    mini.submit("q", BODY)
    with structlog.testing.capture_logs() as logs:
        daemon = daemon_for(mini, counting_job(tmp_path / "tries"), **settings)
        assert run(daemon, lambda: mini.answered() == 1) == 0
    found = [e for e in logs if e["event"] == "job_timeout_exceeds_lease"]
    assert bool(found) is warned
    if warned:
        assert found[0]["lease_s"] == 60 and found[0]["log_level"] == "warning"


def test_clip_cuts_at_a_word_boundary():
    from xgrader.logs import clip

    text = "connection refused by the queue server at its address " * 10
    out = clip(text, 60)
    assert len(out) <= 60 and out.endswith("...")
    assert all(word in text.split() for word in out.removesuffix("...").split())
    assert clip("short\nmessage", 60) == "short message"


def test_result_cache_is_bounded_and_forgets_after_its_ttl():
    from xgrader.daemon.results import ResultCache

    now = [0.0]
    cache = ResultCache(2, ttl_s=10, clock=lambda: now[0])
    for sid in ("1", "2", "3"):
        cache.put((sid, "d"), f'{{"score": {sid}}}', 3)
    assert cache.get(("1", "d")) is None and len(cache) == 2          # the oldest went
    assert cache.get(("3", "d")).reply == '{"score": 3}'
    assert cache.get(("3", "other body")) is None                     # same id, other content
    now[0] = 10.5
    assert cache.get(("3", "d")) is None                              # past its TTL
    off = ResultCache(0, ttl_s=10)
    off.put(("1", "d"), "{}", 1)
    assert off.get(("1", "d")) is None


def test_ledger_counts_exactly_and_keeps_the_latest_reasons():
    from xgrader.daemon.ledger import MAX_REASONS, AttemptLedger

    ledger = AttemptLedger(max_entries=2)
    for n in range(MAX_REASONS + 3):
        ledger.add(("1", "d"), f"kind{n}")
    assert ledger.count(("1", "d")) == MAX_REASONS + 3
    assert ledger.reasons(("1", "d"))[-1] == f"kind{MAX_REASONS + 2}" and len(ledger.reasons(("1", "d"))) == MAX_REASONS
    ledger.add(("2", "d"), "x")
    ledger.add(("3", "d"), "x")
    assert ledger.count(("1", "d")) == 0                               # bounded: the oldest went
