"""A graded stack with an attempt ledger, for the ledger, regrade and
dashboard tests: `xgrader queue serve --ledger` and `xgrader run`
subprocesses (bwrap), LMS-style submits and a real callback receiver."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import requests

from xgrader.config import DEFAULT_HANDLERS
from xgrader.daemon.demo_harness import CallbackReceiver, DemoRun, Sample, free_port, login, submit, wait_http

WRONG = "def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, int(n ** 0.5)))\n"
RIGHT = (DEFAULT_HANDLERS / "is_prime" / "samples" / "correct.py").read_text()


class Stack:
    def __init__(self, tmp: Path, ledger_url: str, metrics_port: int | None = None) -> None:
        self.run = DemoRun(handlers=DEFAULT_HANDLERS, workdir=tmp, out=sys.stderr, ledger_url=ledger_url,
                           metrics_port=metrics_port)
        self.password = "pw-" + os.urandom(6).hex()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/xqueue/"
        self.receiver = CallbackReceiver()
        self.queue = self.run.start_queue(self.port, self.password)
        wait_http(self.url + "status/", 30, self.queue)
        self.session = requests.Session()
        login(self.session, self.url, "xgrader", self.password)
        self.daemon = self.run.start_daemon(self.url, self.password)

    def grade(self, samples: list[Sample], timeout: float = 120) -> dict[str, list[dict]]:
        for s in samples:
            submit(self.session, self.url, s, self.receiver.url)
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.receiver.count() < len(samples):
            time.sleep(0.1)
        with self.receiver.lock:
            return {k: list(v) for k, v in self.receiver.results.items()}

    def close(self) -> None:
        self.receiver.stop()
        for proc in (self.daemon, self.queue):
            self.run.stop(proc, grace=20)


def sample(name: str, code: str) -> Sample:
    return Sample(key=f"{name}-{os.urandom(3).hex()}", assignment="is_prime", name=name, student_response=code)


