"""The forker (xgrader/daemon/forker.py): job children forked by a frozen
copy of the daemon, supervised by the parent as before; a forker that dies
or goes stale is replaced and nothing is lost or answered twice. Real forked
processes, real signals, the in-process HTTP queue of tests/support."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from tests.support.daemon import MiniClient, NoSandbox, stop_when
from tests.test_daemon_supervisor import BODY, alive, ok_job, settings_for
from xgrader.daemon import Daemon


def _daemon(server, job, **kw) -> Daemon:
    return Daemon(settings_for(server.url, **kw), MiniClient(server.url), NoSandbox(), job=job,
                  ready_children=kw.pop("ready_children", 0))


def _run(daemon: Daemon, until, timeout: float = 20.0) -> int:
    cancel = stop_when(until, timeout)
    try:
        return daemon.run()
    finally:
        cancel.set()


def test_job_children_are_the_forkers_and_every_submission_is_answered_once(mini_xqueue, tmp_path: Path):
    for _ in range(6):
        mini_xqueue.submit("q", BODY)
    marks = tmp_path / "marks"

    def job(ctx, reporter):
        with open(marks, "a") as fh:
            fh.write(f"{os.getpid()} {os.getppid()}\n")
        ok_job(ctx, reporter)

    daemon = _daemon(mini_xqueue, job)
    seen_forkers: list[int] = []
    original = daemon._start_forker

    def start_and_note() -> None:
        original()
        seen_forkers.extend(f.pid for f in daemon.supervisor.forkers)

    daemon._start_forker = start_and_note
    code = _run(daemon, lambda: mini_xqueue.answered() == 6)
    assert code == 0 and [len(e.results) for e in mini_xqueue.entries] == [1] * 6
    parents = {int(line.split()[1]) for line in marks.read_text().splitlines()}
    assert len(seen_forkers) == 1 and parents == set(seen_forkers) and os.getpid() not in parents
    # The forker is gone with the daemon, reaped (no zombie left).
    assert not alive(seen_forkers[0]) and daemon.supervisor.forkers == []


def test_a_killed_forker_takes_its_children_and_the_parent_grades_them_again(mini_xqueue, tmp_path: Path,
                                                                            monkeypatch):
    """SIGKILL the forker while its child grades: the child dies with it
    (PDEATHSIG), the parent counts it as killed, retries the submission in a
    child it forks itself, and the submission is answered once; after the
    next backend check a new forker forks the children again."""
    monkeypatch.setattr("xgrader.daemon.loop.BACKEND_CHECK_EVERY_S", 0.3)
    mini_xqueue.lease_s = 30.0  # only the daemon's own retry can answer it in time
    mini_xqueue.submit("q", BODY)
    marks = tmp_path / "marks"

    def job(ctx, reporter):
        with open(marks, "a") as fh:
            fh.write(f"{os.getpid()} {os.getppid()}\n")
        if ctx.attempt == 1 and ctx.submission_id == "1":
            time.sleep(30)
        ok_job(ctx, reporter)

    daemon = _daemon(mini_xqueue, job)

    def kill_forker() -> None:
        end = time.monotonic() + 10
        while not marks.exists() and time.monotonic() < end:
            time.sleep(0.01)
        forkers.append(daemon.supervisor.forkers[0].pid)
        os.kill(forkers[0], signal.SIGKILL)
        while mini_xqueue.answered() < 1 and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(1.0)  # a backend check or more
        mini_xqueue.submit("q", BODY)

    forkers: list[int] = []
    threading.Thread(target=kill_forker, daemon=True).start()
    code = _run(daemon, lambda: mini_xqueue.answered() == 2)
    time.sleep(0.2)
    first_entry, _ = mini_xqueue.entries
    first, second, third = [tuple(map(int, line.split())) for line in marks.read_text().splitlines()]
    assert code == 0 and [len(e.results) for e in mini_xqueue.entries] == [1, 1]
    assert first[1] == forkers[0] and not alive(first[0])   # the forker's child went with it
    assert second[1] == os.getpid()        # the retry was forked by the parent itself
    assert third[1] not in (os.getpid(), forkers[0])        # a new forker took over


class Helpers(NoSandbox):
    """A backend whose long-lived helpers (fork servers) can be 'restarted'."""

    def __init__(self) -> None:
        super().__init__()
        self.generation = 1

    def helpers(self) -> tuple:
        return (self.generation,)


def test_a_new_forker_replaces_one_holding_restarted_helpers(mini_xqueue, tmp_path: Path, monkeypatch):
    monkeypatch.setattr("xgrader.daemon.loop.BACKEND_CHECK_EVERY_S", 0.05)
    marks = tmp_path / "marks"

    def job(ctx, reporter):
        with open(marks, "a") as fh:
            fh.write(f"{os.getppid()}\n")
        ok_job(ctx, reporter)

    backend = Helpers()
    daemon = Daemon(settings_for(mini_xqueue.url), MiniClient(mini_xqueue.url), backend, job=job,
                    ready_children=0)
    forkers: list[int] = []

    def feed() -> None:
        mini_xqueue.submit("q", BODY)
        end = time.monotonic() + 10
        while mini_xqueue.answered() < 1 and time.monotonic() < end:
            time.sleep(0.01)
        forkers.append(daemon.supervisor.forkers[-1].pid)
        backend.generation = 2          # the next backend check sees new helpers
        while len(daemon.supervisor.forkers) and daemon.supervisor.forkers[-1].pid == forkers[0] \
                and time.monotonic() < end:
            time.sleep(0.01)
        forkers.append(daemon.supervisor.forkers[-1].pid)
        mini_xqueue.submit("q", BODY)

    threading.Thread(target=feed, daemon=True).start()
    code = _run(daemon, lambda: mini_xqueue.answered() == 2)
    parents = [int(x) for x in marks.read_text().split()]
    assert code == 0 and len(forkers) == 2 and forkers[0] != forkers[1]
    assert parents == forkers                # each job from the forker current at the time
    assert not alive(forkers[0])             # the old one closed once it had no children left


def test_a_job_of_any_size_reaches_its_child_through_the_forker(mini_xqueue, tmp_path: Path):
    """The job travels through a pipe the child reads to EOF, not in the
    request datagram (a few hundred KB would not fit one)."""
    big = dict(BODY, student_response="#" * 3_000_000)
    mini_xqueue.submit("q", big)
    marks = tmp_path / "marks"

    def job(ctx, reporter):
        marks.write_text(f"{len(ctx.content)} {os.getppid()}")
        ok_job(ctx, reporter)

    daemon = _daemon(mini_xqueue, job)
    code = _run(daemon, lambda: mini_xqueue.answered() == 1)
    size, parent = map(int, marks.read_text().split())
    assert code == 0 and size > 3_000_000 and parent != os.getpid()
