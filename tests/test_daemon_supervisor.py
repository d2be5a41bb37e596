"""The supervisor and the pull loop with real forked children, real signals
and a real HTTP queue (tests/support/daemon.py); job functions are injected."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from xgrader.config import Settings
from xgrader.daemon import Daemon
from xgrader.daemon.child import JobContext
from xgrader.daemon.messages import ChildReport, Reporter
from xgrader.daemon.supervisor import Supervisor
from xgrader.daemon.watchdog import StallWatchdog
from xgrader.hooks import Hooks
from xgrader.wire import GraderReply
from tests.support.daemon import MiniClient, NoSandbox, stop_when

BODY = {"student_response": "print(1)", "grader_payload": '{"grader": "x"}', "student_info": "{}"}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Recorder(Hooks):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_posted(self, queue, accepted, reason=""):
        self.calls.append(("posted", accepted, reason))

    def on_infra_failure(self, queue, kind):
        self.calls.append(("infra", kind))

    def on_graded(self, queue, assignment, outcome, seconds):
        self.calls.append(("graded", outcome))

    def on_phase(self, queue, phase, seconds):
        self.calls.append(("phase", phase))

    def on_pulled(self, queue, submission_id):
        self.calls.append(("pulled", submission_id))


def settings_for(url: str, **kw) -> Settings:
    base = dict(queue_url=url, queue_names=["q"], poll_min_s=0.01, poll_max_s=0.05, concurrency=2,
                job_timeout_s=5.0, max_attempts=3, shutdown_grace_s=5.0, stall_timeout_s=60.0)
    base.update(kw)
    return Settings(**base)


def ok_job(ctx: JobContext, reporter: Reporter) -> None:
    """What production's child does: report the reply; the parent posts it."""
    reply = GraderReply(correct=True, score=1, msg="<div>ok</div>")
    reporter.report(ChildReport(outcome="graded", reply=reply.to_body(), grade_outcome="passed",
                                score=1, max_score=1))


def run_daemon(server, job, until, timeout=20.0, hooks=None, ready_children=None, **kw) -> tuple[int, float]:
    daemon = Daemon(settings_for(server.url, **kw), MiniClient(server.url), NoSandbox(), hooks, job=job,
                    ready_children=ready_children)
    cancel = stop_when(until, timeout)
    start = time.monotonic()
    try:
        code = daemon.run()
    finally:
        cancel.set()
    return code, time.monotonic() - start


# -- supervisor alone ----------------------------------------------------------

def test_deadline_kills_whole_tree_including_setsid_grandchildren(tmp_path: Path):
    pids_file = tmp_path / "pids"

    def job(reporter: Reporter) -> None:
        pids = []
        for detach in (False, True):
            pid = os.fork()
            if pid == 0:
                if detach:
                    os.setsid()  # leaves the job's process group, like bwrap --new-session
                    if os.fork():  # and a great-grandchild under it
                        time.sleep(60)
                        os._exit(0)
                time.sleep(60)
                os._exit(0)
            pids.append(pid)
        pids_file.write_text(json.dumps(pids))
        time.sleep(60)

    sup = Supervisor()
    handle = sup.spawn(job, timeout=0.5, label="t1")
    done = []
    end = time.monotonic() + 10
    while not done and time.monotonic() < end:
        done = sup.poll()
        time.sleep(0.02)
    assert done and done[0].killed_for == "timeout"
    assert os.WIFSIGNALED(handle.exit_status) and os.WTERMSIG(handle.exit_status) == signal.SIGKILL
    pids = json.loads(pids_file.read_text())
    time.sleep(0.2)
    survivors = [p for p in pids if alive(p)]
    # The great-grandchild: any process still in the detached session.
    leftover = [int(p) for p in os.listdir("/proc") if p.isdigit() and alive(int(p))
                and _sid(int(p)) in pids]
    assert survivors == [] and leftover == []


def _sid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[4])
    except (FileNotFoundError, IndexError, ValueError):
        return -1


def test_child_messages_and_exit_are_collected():
    def job(reporter: Reporter) -> None:
        reporter.report(ChildReport(outcome="graded", reply="{}", phases={"run": 0.5}, score=2))

    sup = Supervisor()
    sup.spawn(job, timeout=5, label="t2")
    done = sup.wait_all(5)
    assert len(done) == 1 and done[0].report.score == 2 and done[0].report.phases == {"run": 0.5}
    assert done[0].exit_code == 0
    assert sup.children == {}


# -- the loop --------------------------------------------------------------------

def test_grades_every_submission_exactly_once(mini_xqueue):
    for _ in range(10):
        mini_xqueue.submit("q", BODY)
    code, _ = run_daemon(mini_xqueue, ok_job, lambda: mini_xqueue.answered() == 10)
    assert code == 0
    assert [len(e.results) for e in mini_xqueue.entries] == [1] * 10
    assert all(e.pulls == 1 for e in mini_xqueue.entries)


def test_crashing_child_is_retried_then_could_not_grade(mini_xqueue, tmp_path: Path):
    tries = tmp_path / "tries"

    def crash(ctx, reporter):
        with open(tries, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        os._exit(3)

    hooks = Recorder()
    mini_xqueue.submit("q", BODY)
    code, _ = run_daemon(mini_xqueue, crash, lambda: mini_xqueue.answered() == 1, hooks=hooks)
    assert code == 0
    assert len(tries.read_text().split()) == 3
    (entry,) = mini_xqueue.entries
    assert len(entry.results) == 1 and entry.results[0]["correct"] is None
    assert "could not be graded" in entry.results[0]["msg"]
    assert hooks.calls.count(("infra", "child_died")) == 3
    assert ("posted", True, "") in hooks.calls


def test_infra_report_is_retried_and_then_succeeds(mini_xqueue, tmp_path: Path):
    tries = tmp_path / "tries"

    def flaky(ctx, reporter):
        with open(tries, "a") as fh:
            fh.write("x\n")
        if ctx.attempt < 2:
            reporter.report(ChildReport(outcome="infra", infra_kind="sandbox_start"))
            return
        ok_job(ctx, reporter)

    hooks = Recorder()
    mini_xqueue.submit("q", BODY)
    code, _ = run_daemon(mini_xqueue, flaky, lambda: mini_xqueue.answered() == 1, hooks=hooks)
    assert code == 0 and len(tries.read_text().split()) == 2
    assert mini_xqueue.entries[0].results[0]["correct"] is True
    assert ("infra", "sandbox_start") in hooks.calls


def test_child_dying_after_its_report_is_posted_once_and_not_retried(mini_xqueue, tmp_path: Path):
    tries = tmp_path / "tries"

    def report_then_die(ctx, reporter):
        with open(tries, "a") as fh:
            fh.write("x\n")
        ok_job(ctx, reporter)
        os._exit(9)

    hooks = Recorder()
    mini_xqueue.submit("q", BODY)
    code, _ = run_daemon(mini_xqueue, report_then_die, lambda: mini_xqueue.answered() == 1, hooks=hooks)
    assert code == 0
    (entry,) = mini_xqueue.entries
    assert len(entry.results) == 1 and entry.results[0]["correct"] is True and entry.pulls == 1
    assert len(tries.read_text().split()) == 1 and not [c for c in hooks.calls if c[0] == "infra"]


def test_poison_submission_reserved_while_failing_is_answered_once(mini_xqueue, tmp_path: Path):
    """A child that hangs until its deadline, every time, on a server whose
    lease is shorter than the deadline: the re-serves (new keys) while it is
    being graded start no grading and count nothing; the gradings that
    failed do, and after max_attempts the parent answers could-not-grade,
    once, with the latest key."""
    mini_xqueue.lease_s = 0.2
    tries = tmp_path / "tries"

    def hang(ctx, reporter):
        with open(tries, "a") as fh:
            fh.write("x\n")
        time.sleep(60)

    hooks = Recorder()
    mini_xqueue.submit("q", BODY)
    code, _ = run_daemon(mini_xqueue, hang, lambda: mini_xqueue.answered() == 1, hooks=hooks,
                         job_timeout_s=0.6, max_attempts=2)
    (entry,) = mini_xqueue.entries
    assert code == 0 and entry.pulls >= 3            # served again while being graded
    assert len(tries.read_text().split()) == 2       # graded max_attempts times, not once per pull
    assert len(entry.results) == 1 and entry.results[0]["correct"] is None and entry.rejected == 0
    assert hooks.calls.count(("infra", "timeout")) == 2


def test_foreign_key_is_counted_and_dropped(mini_xqueue, tmp_path: Path):
    started, go = tmp_path / "started", tmp_path / "go"

    def job(ctx, reporter):
        started.write_text("1")
        end = time.monotonic() + 10
        while not go.exists() and time.monotonic() < end:
            time.sleep(0.01)
        ok_job(ctx, reporter)

    def another_grader_pulls_it() -> None:
        end = time.monotonic() + 10
        while not started.exists() and time.monotonic() < end:
            time.sleep(0.01)
        with mini_xqueue.lock:
            entry = mini_xqueue.entries[0]
            entry.key, entry.leased_until = "0" * 32, time.monotonic() + 60
        go.write_text("1")

    import threading
    threading.Thread(target=another_grader_pulls_it, daemon=True).start()
    hooks = Recorder()
    mini_xqueue.submit("q", BODY)
    code, _ = run_daemon(mini_xqueue, job, lambda: mini_xqueue.entries[0].rejected >= 1, hooks=hooks)
    (entry,) = mini_xqueue.entries
    assert code == 0 and entry.rejected == 1 and entry.results == [] and entry.pulls == 1
    assert ("posted", False, "foreign_key") in hooks.calls


def test_timeout_kills_and_retries_then_answers(mini_xqueue, tmp_path: Path):
    pids = tmp_path / "pids"

    def hang(ctx, reporter):
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        with open(pids, "a") as fh:
            fh.write(f"{pid}\n")
        time.sleep(60)

    hooks = Recorder()
    mini_xqueue.submit("q", BODY)
    code, elapsed = run_daemon(mini_xqueue, hang, lambda: mini_xqueue.answered() == 1,
                               hooks=hooks, job_timeout_s=0.3, max_attempts=2)
    assert code == 0 and elapsed < 5
    assert hooks.calls.count(("infra", "timeout")) == 2
    assert mini_xqueue.entries[0].results[0]["correct"] is None
    assert not any(alive(int(p)) for p in pids.read_text().split())


def test_sigterm_lets_in_flight_job_finish_and_post(mini_xqueue, tmp_path: Path):
    started = tmp_path / "started"

    def slow(ctx, reporter):
        started.write_text("1")
        time.sleep(0.8)
        ok_job(ctx, reporter)

    mini_xqueue.submit("q", BODY)
    mini_xqueue.submit("q", BODY)
    code, elapsed = run_daemon(mini_xqueue, slow, started.exists, concurrency=1)
    assert code == 0
    first, second = mini_xqueue.entries
    assert len(first.results) == 1 and first.results[0]["correct"] is True
    assert second.pulls == 0  # stopped pulling


def test_second_signal_kills_children_and_exits_nonzero(mini_xqueue, tmp_path: Path):
    started = tmp_path / "started"

    def hang(ctx, reporter):
        started.write_text(str(os.getpid()))
        time.sleep(60)

    mini_xqueue.submit("q", BODY)
    daemon = Daemon(settings_for(mini_xqueue.url), MiniClient(mini_xqueue.url), NoSandbox(), job=hang)
    first = stop_when(started.exists, 10)
    second = stop_when(lambda: daemon.flags.draining, 10)   # once the first signal was taken
    start = time.monotonic()
    try:
        code = daemon.run()
    finally:
        first.set()
        second.set()
    assert code == 1
    assert time.monotonic() - start < 5
    assert not alive(int(started.read_text())) and mini_xqueue.entries[0].results == []


def test_dead_queue_server_backs_off_and_recovers(mini_xqueue):
    mini_xqueue.down = True
    mini_xqueue.submit("q", BODY)

    def revive():
        time.sleep(0.5)
        mini_xqueue.down = False

    import threading
    threading.Thread(target=revive, daemon=True).start()
    code, _ = run_daemon(mini_xqueue, ok_job, lambda: mini_xqueue.answered() == 1)
    assert code == 0 and len(mini_xqueue.entries[0].results) == 1


def test_round_robin_serves_every_queue(mini_xqueue):
    for q in ("a", "b"):
        for _ in range(3):
            mini_xqueue.submit(q, BODY)
    code, _ = run_daemon(mini_xqueue, ok_job, lambda: mini_xqueue.answered() == 6,
                         queue_names=["a", "b"], concurrency=1)
    assert code == 0 and all(len(e.results) == 1 for e in mini_xqueue.entries)


def test_restart_runs_backend_cleanup_and_kill_by_label(mini_xqueue):
    backend = NoSandbox()

    def hang(ctx, reporter):
        time.sleep(60)

    mini_xqueue.submit("q", BODY)
    daemon = Daemon(settings_for(mini_xqueue.url, job_timeout_s=0.2, max_attempts=1),
                    MiniClient(mini_xqueue.url), backend, job=hang)
    cancel = stop_when(lambda: mini_xqueue.answered() == 1, 10)
    try:
        assert daemon.run() == 0
    finally:
        cancel.set()
    assert backend.cleanups == 1 and backend.killed_labels == [f"xg-{os.getpid()}-1"]


def test_stall_watchdog_exits_when_loop_stops():
    codes: list[int] = []
    dog = StallWatchdog(0.2, exit_fn=codes.append).start()
    time.sleep(0.6)
    assert codes == [70]
    ticking = StallWatchdog(0.2, exit_fn=codes.append).start()
    for _ in range(8):
        ticking.tick()
        time.sleep(0.05)
    ticking.stop()
    dog.stop()
    assert codes == [70]


def _forked_daemon(server, job, **kw) -> int:
    """A daemon in its own process (so the test can SIGKILL it)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = Daemon(settings_for(server.url, **kw), MiniClient(server.url), NoSandbox(), job=job).run()
        finally:
            os._exit(code)
    return pid


def test_sigkilled_daemon_mid_grade_is_graded_once_by_the_next(mini_xqueue, tmp_path: Path):
    mini_xqueue.lease_s = 1.0
    marks = tmp_path / "marks"

    def slow(ctx, reporter):
        with open(marks, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.6)
        ok_job(ctx, reporter)

    mini_xqueue.submit("q", BODY)
    first = _forked_daemon(mini_xqueue, slow)
    end = time.monotonic() + 10
    while not marks.exists() and time.monotonic() < end:
        time.sleep(0.02)
    os.kill(first, signal.SIGKILL)
    os.waitpid(first, 0)
    orphan = int(marks.read_text().split()[0])
    time.sleep(0.1)
    assert not alive(orphan)  # died with its parent: it cannot post late
    code, _ = run_daemon(mini_xqueue, slow, lambda: mini_xqueue.answered() == 1)
    time.sleep(0.2)
    (entry,) = mini_xqueue.entries
    assert code == 0 and entry.pulls == 2 and len(entry.results) == 1


def test_queue_server_restart_mid_run_loses_nothing(mini_xqueue):
    mini_xqueue.lease_s = 0.5
    for _ in range(6):
        mini_xqueue.submit("q", BODY)

    def slow(ctx, reporter):
        time.sleep(0.2)
        ok_job(ctx, reporter)

    import threading

    def restart_after_first():
        end = time.monotonic() + 10
        while mini_xqueue.answered() < 1 and time.monotonic() < end:
            time.sleep(0.01)
        mini_xqueue.restart(0.7)

    restarter = threading.Thread(target=restart_after_first, daemon=True)
    restarter.start()
    # No ready children and no forker here: forked ahead of their jobs, they
    # would keep this in-process server's old listening socket open through
    # the restart (a real queue server is not in the daemon's process).
    code, _ = run_daemon(mini_xqueue, slow, lambda: mini_xqueue.answered() == 6, timeout=30,
                         ready_children=0, forker=False)
    # On a loaded machine the restart may come after the last answer: the
    # fixture's stop() must not meet a server that is not serving yet.
    restarter.join(timeout=15)
    time.sleep(0.2)
    assert code == 0 and [len(e.results) for e in mini_xqueue.entries] == [1] * 6


def test_deadline_kills_a_real_bwrap_sandbox_without_die_with_parent(tmp_path: Path):
    """bwrap --new-session leaves the job's process group and --unshare-pid hides
    its children from kill(-pgid): the tree kill still finds and kills them."""
    import shutil
    import subprocess

    bwrap = shutil.which("bwrap")
    assert bwrap, "bubblewrap is installed by scripts/setup.sh"
    marker = f"61.{os.getpid() % 1000}{int(time.time() * 1000) % 1000}"

    def job(reporter: Reporter) -> None:
        subprocess.Popen([bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                          "--unshare-pid", "--new-session", "sleep", marker])
        time.sleep(60)

    def sleepers() -> list[int]:
        out = []
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    cmd = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if cmd[:1] == [b"sleep"] and marker.encode() in cmd and alive(int(p)):
                    out.append(int(p))
        return out

    sup = Supervisor()
    sup.spawn(job, timeout=1.0, label="bwrap")
    end = time.monotonic() + 5
    while not sleepers() and time.monotonic() < end:
        time.sleep(0.05)
    assert sleepers(), "the sandboxed process started"
    done = sup.wait_all(10)
    assert done and done[0].killed_for == "timeout"
    time.sleep(0.2)
    assert sleepers() == []
