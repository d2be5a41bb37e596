"""Sandboxes' host-side wall clocks share one thread per backend."""

from __future__ import annotations

import os
import threading
import time

from xgrader.backends.deadlines import Deadlines


def test_deadlines_fire_in_order_and_cancelled_ones_never() -> None:
    deadlines = Deadlines()
    fired: list[str] = []
    done = threading.Event()
    now = time.monotonic()
    deadlines.at(now + 0.30, lambda: (fired.append("c"), done.set()))
    deadlines.at(now + 0.10, lambda: fired.append("a"))
    cancelled = deadlines.at(now + 0.05, lambda: fired.append("never"))
    deadlines.at(now + 0.20, lambda: fired.append("b"))
    cancelled.cancel()
    assert done.wait(5)
    assert fired == ["a", "b", "c"]
    assert time.monotonic() - now >= 0.30
    threads = [t for t in threading.enumerate() if t.name == "xgrader-deadlines"]
    assert len(threads) >= 1 and all(t.daemon for t in threads)


def test_an_earlier_deadline_wakes_the_thread_and_a_failing_callback_stops_nothing() -> None:
    deadlines = Deadlines()
    got = threading.Event()
    deadlines.at(time.monotonic() + 60, lambda: None)     # the thread now sleeps for a minute
    deadlines.at(time.monotonic() + 0.05, lambda: 1 / 0)
    started = time.monotonic()
    deadlines.at(time.monotonic() + 0.1, got.set)
    assert got.wait(5) and time.monotonic() - started < 2


def test_a_forked_child_gets_a_thread_of_its_own() -> None:
    deadlines = Deadlines()
    deadlines.at(time.monotonic() + 60, lambda: None)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the parent's thread does not exist here
        ok = threading.Event()
        deadlines.at(time.monotonic() + 0.05, ok.set)
        os.write(w, b"1" if ok.wait(5) else b"0")
        os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"1"
    finally:
        os.close(r)
        os.waitpid(pid, 0)
