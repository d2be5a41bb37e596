"""Ready children (forked ahead of their job) and the parent posting the
child's reply: real forks, a real HTTP queue (tests/support/daemon.py), and
for the warm pool real bwrap sandboxes."""

from __future__ import annotations

import os
import time
from pathlib import Path

from xgrader.config import Settings
from xgrader.daemon.child import JobContext
from xgrader.daemon.messages import ChildReport, Reporter
from xgrader.daemon.supervisor import Supervisor
from xgrader.backends import make_backend
from xgrader.backends.base import SandboxJob
from xgrader.wire import GraderReply
from tests.support.fork import in_forked_child
from tests.test_daemon_supervisor import BODY, Recorder, run_daemon

REPLY = GraderReply(correct=True, score=1, msg="<div>ok</div>")


def _start_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[19])


def _uptime_ticks() -> int:
    with open("/proc/uptime") as fh:
        return int(float(fh.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


# -- the supervisor alone ----------------------------------------------------------

def test_ready_child_runs_its_job_only_once_assigned(tmp_path: Path):
    seen = tmp_path / "seen"

    def fn(reporter: Reporter, job: bytes) -> None:
        seen.write_bytes(job)
        reporter.report(ChildReport(outcome="graded", reply=REPLY.to_body()))

    sup = Supervisor()
    handle = sup.spawn_ready(fn, label="r1")
    time.sleep(0.3)
    assert sup.poll() == [] and not seen.exists()   # waits, no deadline, nothing run
    assert sup.ready() == [handle] and handle.deadline == float("inf")
    big = b"x" * 300_000                               # more than a pipe holds
    assert sup.assign(handle, big, timeout=5, label="job", context="ctx")
    assert sup.ready() == [] and handle.deadline < time.monotonic() + 5.1
    done = sup.wait_all(5)
    assert done == [handle] and handle.exit_code == 0 and handle.context == "ctx"
    assert seen.read_bytes() == big and handle.report.outcome == "graded"


def test_retired_ready_children_exit_without_running_the_job(tmp_path: Path):
    ran = tmp_path / "ran"

    def fn(reporter: Reporter, job: bytes) -> None:
        ran.write_text(repr(job))

    sup = Supervisor()
    first = sup.spawn_ready(fn, label="r1")
    second = sup.spawn_ready(fn, label="r2")   # holds no copy of the first's job pipe
    sup.retire_ready()
    done = sup.wait_all(5)
    assert {h.pid for h in done} == {first.pid, second.pid}
    assert all(h.exit_code == 0 and h.killed_for is None for h in done)
    assert ran.read_text() == "b''"                # fn is told, with an empty job, to clean up


def test_assign_to_a_dead_ready_child_fails_and_is_not_a_job():
    sup = Supervisor()
    handle = sup.spawn_ready(lambda reporter, job: None, label="r1")
    os.kill(handle.pid, 9)
    time.sleep(0.2)
    assert sup.assign(handle, b"x" * 200_000, timeout=5, label="job") is False
    assert not handle.assigned
    sup.wait_all(5)
    assert sup.children == {}


# -- the loop ----------------------------------------------------------------------

def test_job_runs_in_a_child_forked_before_the_submission_came(mini_xqueue, tmp_path: Path):
    started = tmp_path / "started"

    def job(ctx: JobContext, reporter: Reporter) -> None:
        started.write_text(str(_start_ticks(os.getpid())))
        reporter.report(ChildReport(outcome="graded", reply=REPLY.to_body(), grade_outcome="passed"))

    import threading

    submitted: list[int] = []

    def submit_later() -> None:
        time.sleep(1.0)
        submitted.append(_uptime_ticks())
        mini_xqueue.submit("q", BODY)

    threading.Thread(target=submit_later, daemon=True).start()
    code, _ = run_daemon(mini_xqueue, job, lambda: mini_xqueue.answered() == 1)
    assert code == 0 and len(mini_xqueue.entries[0].results) == 1
    # Forked at least half a second before the submission existed.
    assert int(started.read_text()) < submitted[0] - os.sysconf("SC_CLK_TCK") // 2


def test_parent_posts_a_reported_reply_once_even_if_the_child_then_hangs(mini_xqueue, tmp_path: Path):
    tries = tmp_path / "tries"

    def report_then_hang(ctx: JobContext, reporter: Reporter) -> None:
        with open(tries, "a") as fh:
            fh.write("x\n")
        reporter.report(ChildReport(outcome="graded", reply=REPLY.to_body(), grade_outcome="passed",
                                    score=1, max_score=1))
        time.sleep(60)

    hooks = Recorder()
    mini_xqueue.submit("q", BODY)
    t0 = time.monotonic()
    code, _ = run_daemon(mini_xqueue, report_then_hang, lambda: mini_xqueue.answered() == 1, hooks=hooks,
                         job_timeout_s=3.0)
    (entry,) = mini_xqueue.entries
    # Posted on the report, long before the child's deadline; never retried.
    assert code == 0 and entry.pulls == 1 and len(entry.results) == 1 and entry.results[0]["correct"] is True
    assert len(tries.read_text().split()) == 1
    assert ("posted", True, "") in hooks.calls and ("phase", "post") in hooks.calls
    assert time.monotonic() - t0 < 20


def test_bad_reply_from_a_child_is_infra_retried_then_could_not_grade(mini_xqueue, tmp_path: Path):
    tries = tmp_path / "tries"

    def bad(ctx: JobContext, reporter: Reporter) -> None:
        with open(tries, "a") as fh:
            fh.write("x\n")
        reporter.report(ChildReport(outcome="graded", reply='{"score": -1}'))

    hooks = Recorder()
    mini_xqueue.submit("q", BODY)
    code, _ = run_daemon(mini_xqueue, bad, lambda: mini_xqueue.answered() == 1, hooks=hooks)
    (entry,) = mini_xqueue.entries
    assert code == 0 and len(tries.read_text().split()) == 3
    assert len(entry.results) == 1 and entry.results[0]["correct"] is None
    assert hooks.calls.count(("infra", "bad_reply")) == 3


def test_sigterm_retires_ready_children(mini_xqueue):
    from xgrader.daemon import Daemon
    from tests.support.daemon import MiniClient, NoSandbox, stop_when
    from tests.test_daemon_supervisor import settings_for

    daemon = Daemon(settings_for(mini_xqueue.url), MiniClient(mini_xqueue.url), NoSandbox(),
                    job=lambda ctx, reporter: None)
    pids: list[int] = []

    def ready_up() -> bool:
        pids[:] = [h.pid for h in daemon.supervisor.ready()]
        return len(pids) == 2

    cancel = stop_when(ready_up, 10)
    try:
        t0 = time.monotonic()
        code = daemon.run()
    finally:
        cancel.set()
    assert code == 0 and len(pids) == 2 and time.monotonic() - t0 < 5
    assert daemon.supervisor.children == {}
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}")


# -- the warm pool in a forked child -----------------------------------------------

def test_forked_child_prestarts_exactly_one_sandbox_and_drops_it_unused():
    pool = make_backend(Settings(sandbox="bwrap", warm_pool=2))
    try:
        def use_one() -> list:
            ready = pool.wait_ready(1, timeout=15)
            job = SandboxJob(argv=pool.python_argv(), files={"m.py": b"x = 1\n"}, channel=True,
                             label="t", limits=Settings().limits_for(None))
            sb = pool.start(job)
            time.sleep(0.5)   # a refill would have started by now
            owned_in_use = len(pool.inner.cgroups.owned_by(os.getpid()))
            sb.kill()
            sb.wait()
            hits, idle = pool.hits, pool.idle
            pool.drop_idle()
            left = len(pool.inner.cgroups.owned_by(os.getpid()))
            return [ready, hits, idle, owned_in_use, left]

        # Warm hit, nothing refilled, one cgroup while in use, none after.
        assert in_forked_child(use_one) == [True, 1, 0, 1, 0]

        # Unused: drop_idle() removes the pre-started sandbox and its cgroup.
        def drop_unused() -> list:
            ready = pool.wait_ready(1, timeout=15)
            before = len(pool.inner.cgroups.owned_by(os.getpid()))
            pool.drop_idle()
            time.sleep(0.3)
            after = len(pool.inner.cgroups.owned_by(os.getpid()))
            return [ready, before, after, pool.idle]

        assert in_forked_child(drop_unused) == [True, 1, 0, 0]
    finally:
        pool.close()


def test_ready_children_dying_on_their_own_pause_and_jobs_still_run(mini_xqueue):
    """Ready children killed before their job (OOM killer, a bug) are not
    re-forked in a tight loop, and a submission is still graded (a fresh fork)."""
    import threading

    from xgrader.daemon import Daemon
    from tests.support.daemon import MiniClient, NoSandbox, stop_when
    from tests.test_daemon_supervisor import settings_for

    def job(ctx, reporter):
        reporter.report(ChildReport(outcome="graded", reply=REPLY.to_body()))

    daemon = Daemon(settings_for(mini_xqueue.url), MiniClient(mini_xqueue.url), NoSandbox(), job=job)
    killed: set[int] = set()
    stop = threading.Event()

    def killer() -> None:
        end = time.monotonic() + 2.0
        while time.monotonic() < end and not stop.is_set():
            for handle in list(daemon.supervisor.children.values()):
                if not handle.assigned and handle.pid not in killed:
                    killed.add(handle.pid)
                    os.kill(handle.pid, 9)
            time.sleep(0.01)
        mini_xqueue.submit("q", BODY)

    threading.Thread(target=killer, daemon=True).start()
    cancel = stop_when(lambda: mini_xqueue.answered() == 1, 20)
    try:
        code = daemon.run()
    finally:
        cancel.set()
        stop.set()
    (entry,) = mini_xqueue.entries
    assert code == 0 and len(entry.results) == 1 and entry.results[0]["correct"] is True
    assert 1 <= len(killed) <= 4   # one round of forks, then paused for READY_PAUSE_S


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def test_drop_idle_during_a_start_in_flight_leaves_nothing_running():
    """A ready child retired while its sandbox is still starting must not exit
    before that start is done: bwrap (not yet under --die-with-parent) would
    be orphaned, still running."""
    pool = make_backend(Settings(sandbox="bwrap", warm_pool=1))
    try:
        def drop_in_flight() -> list:
            pool.prewarm()
            deadline = time.monotonic() + 5
            while not _children_of(os.getpid()) and time.monotonic() < deadline:
                time.sleep(0.0005)     # until bwrap is spawned: the start is in flight
            started = len(_children_of(os.getpid()))
            pool.drop_idle()
            alive = len(_children_of(os.getpid()))
            left = len(pool.inner.cgroups.owned_by(os.getpid()))
            return [started, alive, left]

        assert in_forked_child(drop_in_flight) == [1, 0, 0]
    finally:
        pool.close()


def test_a_reported_child_frees_its_slot_before_it_exits(mini_xqueue, tmp_path: Path):
    """Concurrency 1: the second job starts as soon as the first child has
    given its final word (the reply is posted), not when that child is reaped:
    the first child, lingering after its report, sees the second one start.
    Never two children grading at once, each reply posted once."""
    log = tmp_path / "log"

    def report_then_linger(ctx: JobContext, reporter: Reporter) -> None:
        with open(log, "a") as fh:
            fh.write(f"start {ctx.submission_id}\n")
        with open(log, "a") as fh:
            fh.write(f"report {ctx.submission_id}\n")
        reporter.report(ChildReport(outcome="graded", reply=REPLY.to_body(), grade_outcome="passed",
                                    score=1, max_score=1))
        if ctx.submission_id == "1":
            # A slow exit (sandbox teardown, a loaded box): still here when the next job starts?
            end = time.monotonic() + 10
            while "start 2" not in log.read_text() and time.monotonic() < end:
                time.sleep(0.01)
            with open(log, "a") as fh:
                fh.write(f"exit {ctx.submission_id}\n")

    hooks = Recorder()
    for _ in range(2):
        mini_xqueue.submit("q", BODY)
    code, _ = run_daemon(mini_xqueue, report_then_linger, lambda: mini_xqueue.answered() == 2, hooks=hooks,
                         concurrency=1, ready_children=0)
    assert code == 0
    assert all(e.pulls == 1 and len(e.results) == 1 for e in mini_xqueue.entries)
    events = log.read_text().split("\n")
    assert events[:3] == ["start 1", "report 1", "start 2"]   # one grading at a time
    assert events.index("start 2") < events.index("exit 1"), "the second job waited for the first child to exit"
    assert hooks.calls.count(("posted", True, "")) == 2
