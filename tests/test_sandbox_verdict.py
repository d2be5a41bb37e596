"""One verdict classification for every backend (xgrader/backends/verdict.py),
and the same verdicts from the process and docker backends for the same
events."""

import signal

import pytest

from xgrader.backends.base import Limits, SandboxJob, Verdict
from xgrader.backends.verdict import classify

LIM = Limits(cpu_s=2.0, memory_mb=100)
KILL, XCPU = signal.SIGKILL, signal.SIGXCPU


@pytest.mark.parametrize("evidence,verdict", [
    ({}, Verdict.ok),
    ({"exit_code": 3}, Verdict.ok),                                      # any exit status of its own
    ({"signal": signal.SIGSEGV}, Verdict.killed),
    ({"over_output": True, "over_cpu": True, "oom": True, "timed_out": True}, Verdict.output),
    ({"over_cpu": True, "oom": True, "timed_out": True}, Verdict.cpu_time),
    # Over its CPU time and killed: the limit, even if the OOM killer also
    # fired or the wall ran out meanwhile (the process backend's order,
    # which the docker backend did not have: it said memory).
    ({"signal": KILL, "cpu_s": 2.5, "oom": True}, Verdict.cpu_time),
    ({"signal": KILL, "cpu_s": 2.5, "timed_out": True}, Verdict.cpu_time),
    ({"signal": KILL, "oom": True, "timed_out": True}, Verdict.memory),
    ({"signal": KILL, "timed_out": True, "cpu_s": 0.1}, Verdict.wall_time),
    ({"timed_out": True, "error": "engine gone"}, Verdict.wall_time),
    ({"error": "engine gone", "signal": KILL}, Verdict.sandbox_error),
    ({"vanished": True}, Verdict.killed),
    ({"signal": XCPU, "cpu_s": 0.5}, Verdict.cpu_time),                  # RLIMIT_CPU's soft limit
    ({"signal": KILL, "cpu_s": 1.9}, Verdict.cpu_time),                  # its hard limit (>= 90 %)
    ({"signal": KILL, "cpu_s": 1.0}, Verdict.killed),
    # rlimit mode: a failed job whose largest process reached the per-process cap.
    ({"exit_code": 1, "largest_process_mb": 95.0}, Verdict.memory),
    ({"exit_code": 0, "largest_process_mb": 99.0}, Verdict.ok),          # it finished by itself
    ({"exit_code": 1, "largest_process_mb": 50.0}, Verdict.ok),
    ({"signal": KILL, "largest_process_mb": 95.0}, Verdict.memory),
])
def test_precedence(evidence, verdict):
    assert classify(LIM, **evidence) is verdict


def test_process_and_docker_backends_agree(backend):
    """The same events give the same verdicts on every backend (they now
    share classify): CPU time over the limit with SIGXCPU ignored, memory,
    the wall clock, an exit status, a signal."""
    cases = [
        ("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass\n",
         {"cpu_s": 1, "wall_s": 8}, Verdict.cpu_time),
        ("x = []\nwhile True: x.append(b'x' * 10_000_000)\n", {"memory_mb": 96}, Verdict.memory),
        ("import time\ntime.sleep(60)\n", {"wall_s": 1.5}, Verdict.wall_time),
        ("raise SystemExit(4)\n", {}, Verdict.ok),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n", {}, Verdict.killed),
    ]
    if backend.name == "unsafe":
        cases = [c for c in cases if c[2] is not Verdict.memory]  # no memory limit at all there
    for src, limits, verdict in cases:
        job = SandboxJob(argv=["python3", "-I", "-S", "x.py"], files={"x.py": src.encode()},
                         limits=Limits(**{"wall_s": 5, "cpu_s": 3, **limits}))
        r = backend.run(job)
        assert r.verdict is verdict, (src, r)
