"""The sandbox contract on every backend (tests/support/sandbox.py BACKEND_PARAMS).

Only what every backend, the unsafe debug one included, must do: isolation
properties are in tests/attacks/ (sandboxed backends only)."""

import time

import pytest

from xgrader.backends import make_backend
from xgrader.backends.base import ChannelError, Limits, SandboxJob, Verdict
from xgrader.config import Settings

PY = ["python3", "-I", "-S", "x.py"]


def job(src: str, **kw) -> SandboxJob:
    return SandboxJob(argv=PY, files={"x.py": src.encode()}, **kw)


def test_ok_stdout_stdin(backend):
    r = backend.run(job("import sys; print(sys.stdin.read().upper()); sys.exit(3)", stdin=b"hi"))
    assert r.verdict == Verdict.ok and r.exit_code == 3 and r.stdout == "HI\n"


def test_files_in_subfolders_and_control_chars_stripped(backend):
    r = backend.run(SandboxJob(argv=["python3", "-I", "-S", "pkg/main.py"],
                               files={"pkg/main.py": b"print(open('pkg/data.txt').read() + '\\x00\\x1b[31m')",
                                      "pkg/data.txt": b"payload"}))
    assert r.verdict == Verdict.ok and r.stdout == "payload[31m\n", r


def test_wall_time(backend):
    t = time.monotonic()
    r = backend.run(job("import time; time.sleep(60)", limits=Limits(wall_s=1)))
    assert r.verdict == Verdict.wall_time and time.monotonic() - t < 5


def test_wall_time_enforced_without_wait(backend):
    """An interactive job nobody waits for is still killed at its wall limit."""
    sb = backend.start(job("import time; time.sleep(60)", channel=True, limits=Limits(wall_s=1)))
    try:
        time.sleep(2.0)
        r = sb.wait(timeout=5)
        assert r.verdict == Verdict.wall_time and r.wall_s < 4, r
    finally:
        sb.kill()


def test_output_flood(backend):
    r = backend.run(job("while True: print('x'*1000)", limits=Limits(output_bytes=10_000)))
    assert r.verdict == Verdict.output and len(r.stdout) <= 10_000


def test_cpu_spin(backend):
    r = backend.run(job("while True: pass", limits=Limits(cpu_s=1, wall_s=10)))
    assert r.verdict == Verdict.cpu_time and r.cpu_s is not None and r.cpu_s >= 0.7, r  # tick-sampled rlimit vs exact accounting


def test_runner_roundtrip(backend):
    """The real runner over the backend's channel: load, call, exit."""
    j = SandboxJob(argv=backend.python_argv(), files={"sub.py": b"def f(x):\n    print('hi')\n    return x * 2\n"},
                   channel=True)
    with backend.start(j) as sb:
        sb.channel.send({"op": "load", "module": "sub", "path": "sub.py", "id": 1})
        assert sb.channel.recv(10)["names"] == {"f": "function"}
        sb.channel.send({"op": "call", "target": "f", "args": [21], "kwargs": {}, "id": 2})
        reply = sb.channel.recv(10)
        assert reply["value"] == 42 and reply["stdout"] == "hi\n", reply
        sb.channel.send({"op": "exit", "id": 3})
        assert sb.channel.recv(10) == {"id": 3, "ok": True}
        r = sb.wait()
    assert r.verdict == Verdict.ok and r.exit_code == 0, r


def test_killed_job_then_next_job(backend):
    """(Fork bombs are in tests/attacks: the unsafe backend has no pids limit.)"""
    src = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\ntime.sleep(60)\n"
    r = backend.run(job(src, limits=Limits(wall_s=1)))
    assert r.verdict is Verdict.wall_time
    r2 = backend.run(job("print('fine')"))
    assert r2.verdict == Verdict.ok and r2.stdout == "fine\n"


def test_student_code_imports_environment_packages_without_site_hooks(backend):
    """The runner runs with -I -S, yet student code imports packages installed
    for the sandbox (Debian's python3-pytest here: /usr/lib/python3/dist-packages
    on the host and in the grading image) via SANDBOX_SITE_DIRS; a shipped
    sitecustomize, usercustomize or .pth still runs nothing."""
    files = {
        "x.py": b"import sys, pytest\nprint(pytest.__name__, 'site' in sys.modules)\n",
        "sitecustomize.py": b"print('SITECUSTOMIZE-RAN')\n",
        "usercustomize.py": b"print('USERCUSTOMIZE-RAN')\n",
        "evil.pth": b"import sys; print('PTH-RAN')\n",
    }
    r = backend.run(SandboxJob(argv=backend.python_argv("exec", "x.py"), files=files))
    assert r.verdict == Verdict.ok and r.exit_code == 0, r
    assert r.stdout.split() == ["pytest", "False"], r
    assert "RAN" not in r.stdout + r.stderr, r


LOOP = "def spin():\n    while True:\n        pass\n"


@pytest.mark.parametrize("mode", ["batch", "interactive"])
def test_an_endless_loop_is_stopped_by_wall_plus_half_a_second(backend, mode):
    """The wall limit holds to 0.5 s on every path: the job is stopped and
    its result is back by then, counted from the job's own clock (a batch
    program; a call into student code over the channel, the harness waiting
    on it as the pytest and io kinds do). A CPU limit far away: the wall
    clock alone stops it."""
    wall = 2.0
    limits = Limits(wall_s=wall, cpu_s=60)
    if mode == "batch":
        job = SandboxJob(argv=["python3", "-I", "-S", "x.py"], files={"x.py": (LOOP + "spin()\n").encode()},
                         limits=limits)
    else:
        job = SandboxJob(argv=backend.python_argv(), files={"x.py": LOOP.encode()}, channel=True, limits=limits)
    sb = backend.start(job)
    try:
        if mode == "interactive":
            sb.channel.send({"op": "load", "module": "x", "path": "x.py", "id": 1})
            assert sb.channel.recv(10)["names"] == {"spin": "function"}
            sb.channel.send({"op": "call", "target": "spin", "args": [], "kwargs": {}, "id": 2})
            with pytest.raises((ChannelError, TimeoutError)):
                sb.channel.recv(wall + 5)
        r = sb.wait()
        back = time.monotonic() - sb.started
    finally:
        sb.kill()
    assert r.verdict is Verdict.wall_time, r
    assert r.wall_s <= wall + 0.5 and back <= wall + 0.5, (r.wall_s, back)


def test_the_warm_pool_stops_an_endless_loop_by_wall_plus_half_a_second():
    pool = make_backend(Settings(sandbox="bwrap", warm_pool=1))
    try:
        assert pool.wait_ready(timeout=20)
        job = SandboxJob(argv=pool.python_argv(), files={"x.py": LOOP.encode()}, channel=True,
                         limits=pool.template.limits.model_copy(update={"wall_s": 2.0}))  # the pool's rlimits
        sb = pool.start(job)
        assert pool.hits == 1
        sb.channel.send({"op": "load", "module": "x", "path": "x.py", "id": 1})
        sb.channel.recv(10)
        sb.channel.send({"op": "call", "target": "spin", "args": [], "kwargs": {}, "id": 2})
        with pytest.raises((ChannelError, TimeoutError)):
            sb.channel.recv(7)
        r = sb.wait()
        back = time.monotonic() - sb.started
        assert r.verdict is Verdict.wall_time and r.wall_s <= 2.5 and back <= 2.5, (r, back)
    finally:
        pool.close()
