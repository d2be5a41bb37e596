"""End to end through the real parts: `xgrader queue serve` (subprocess),
`xgrader run` (subprocess, bwrap sandbox), LMS-style submits and a real
callback receiver on loopback.

These need the other areas' modules (client, queue server, grading, feedback,
example assignments with samples/); until those are in the tree the module is
skipped with the reason naming what is missing."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from xgrader.config import DEFAULT_HANDLERS
from xgrader.daemon.demo_harness import (
    QUEUE, CallbackReceiver, DemoRun, Sample, find_samples, login, submit, wait_http, free_port,
)

REQUIRED = ["xgrader.client", "xgrader.queue_server", "xgrader.grading", "xgrader.feedback"]
MISSING = [m for m in REQUIRED if importlib.util.find_spec(m) is None or
           (importlib.util.find_spec(m).origin is None and m == "xgrader.queue_server")]
if DEFAULT_HANDLERS.is_dir() and not find_samples(DEFAULT_HANDLERS):
    MISSING.append("payload_handlers/*/samples")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(MISSING), reason=f"not in the tree yet: {MISSING}")]


class Stack:
    """Queue server + daemon subprocesses + callback receiver, torn down always."""

    def __init__(self, tmp: Path, **daemon_env: str) -> None:
        self.tmp = tmp
        self.run = DemoRun(handlers=DEFAULT_HANDLERS, workdir=tmp, out=sys.stderr)
        self.password = "pw-" + os.urandom(6).hex()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/xqueue/"
        self.receiver = CallbackReceiver()
        self.queue = self.run.start_queue(self.port, self.password)
        wait_http(self.url + "status/", 30, self.queue)
        self.session = requests.Session()
        login(self.session, self.url, "xgrader", self.password)
        self.daemon = self.start_daemon(**daemon_env)

    def start_daemon(self, **env: str) -> subprocess.Popen:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return self.run.start_daemon(self.url, self.password)
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)

    def submit(self, sample: Sample) -> None:
        submit(self.session, self.url, sample, self.receiver.url)

    def wait_for(self, keys: list[str], timeout: float = 90) -> dict[str, list[dict]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.receiver.lock:
                if all(k in self.receiver.results for k in keys):
                    break
            time.sleep(0.1)
        time.sleep(0.3)  # a duplicate would arrive now
        with self.receiver.lock:
            return {k: list(v) for k, v in self.receiver.results.items()}

    def close(self) -> None:
        self.receiver.stop()
        for proc in (self.daemon, self.queue):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    s.close()


def typed(assignment: str, code: str, name: str) -> Sample:
    return Sample(key=f"{name}-{os.urandom(3).hex()}", assignment=assignment, name=name, student_response=code)


def test_demo_command_grades_every_sample_exactly_once():
    proc = subprocess.run([sys.executable, "-m", "xgrader", "demo", "--timeout", "150"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "NO RESULT" not in proc.stdout and "results delivered" in proc.stdout


def test_samples_delivered_once_and_sigterm_during_grading_loses_nothing(stack: Stack):
    samples = find_samples(DEFAULT_HANDLERS)
    for s in samples:
        stack.submit(s)
    # Let the daemon pull, then ask it to stop while it grades.
    end = time.monotonic() + 30
    while time.monotonic() < end and not stack.receiver.results:
        time.sleep(0.05)
    stack.daemon.send_signal(signal.SIGTERM)
    assert stack.daemon.wait(60) == 0
    # Whatever it had not pulled yet is graded by a fresh daemon: nothing lost.
    stack.daemon = stack.start_daemon()
    results = stack.wait_for([s.key for s in samples], timeout=150)
    assert all(len(results.get(s.key, [])) == 1 for s in samples), results
    for body in (b for s in samples for b in results[s.key]):
        assert set(body) >= {"correct", "score", "msg"} and body["msg"].lstrip().startswith("<")


def test_malformed_payload_and_unknown_assignment_get_error_results(stack: Stack):
    unknown = typed("no-such-assignment-xyz", "print(1)", "unknown")
    bad = Sample(key=f"badpayload-{os.urandom(3).hex()}", assignment="x", name="bad")
    stack.submit(unknown)
    # A grader_payload that is not JSON at all: submitted raw.
    header = {"lms_callback_url": stack.receiver.url + bad.key, "lms_key": bad.key, "queue_name": QUEUE}
    body = {"student_response": "x", "grader_payload": "{not json", "student_info": "{}"}
    stack.session.post(stack.url + "submit/", data={"xqueue_header": json.dumps(header),
                                                      "xqueue_body": json.dumps(body)}, timeout=10)
    good = find_samples(DEFAULT_HANDLERS)[0]
    stack.submit(good)
    results = stack.wait_for([unknown.key, bad.key, good.key])
    assert results[unknown.key][0]["correct"] is False and results[unknown.key][0]["score"] == 0
    assert "not set up correctly" in results[unknown.key][0]["msg"]
    assert results[bad.key][0]["correct"] is False and "grader_payload" in results[bad.key][0]["msg"]
    assert len(results[good.key]) == 1
    assert stack.daemon.poll() is None  # still up


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_daemon_grades_through_its_fork_servers_and_they_end_with_it(stack: Stack, stop):
    """The parent starts bwrap's fork servers before forking job children
    (docs/sandbox.md): jobs are forked from them, and they go when the daemon
    goes, however it goes."""
    from xgrader.daemon.proctree import descendants
    from xgrader.backends.cgroups import CgroupManager
    from xgrader.backends.process import pid_alive as _alive

    sample = find_samples(DEFAULT_HANDLERS)[0]
    stack.submit(sample)
    assert len(stack.wait_for([sample.key])[sample.key]) == 1
    pid = stack.daemon.pid

    def cmdline(p: int) -> str:
        try:
            return Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return ""

    def parent(p: int) -> int:
        return int(Path(f"/proc/{p}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])

    # The servers' bwrap processes are the daemon's own children (their jobs,
    # forked from the servers, show the same command line further down).
    tree = [p for p in descendants(pid) if "zygote.py" in cmdline(p)]
    servers = [p for p in tree if parent(p) == pid]
    assert len(servers) == 2, servers  # the runner's and the test side's
    events = [json.loads(line).get("event") for line in (stack.tmp / "daemon.log").read_text().splitlines()
              if line.startswith("{")]
    assert events.count("fork_server_started") == 2 and "fork_server_lost" not in events
    stack.daemon.send_signal(stop)
    stack.daemon.wait(60)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in tree)
    cgroups = CgroupManager()
    if stop == signal.SIGTERM:
        assert cgroups.owned_by(pid) == []
    else:  # orphans: the next daemon's start-up removes them
        stack.daemon = stack.start_daemon()
        deadline = time.monotonic() + 20
        while cgroups.owned_by(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cgroups.owned_by(pid) == []
