"""Adversarial jobs at the sandbox level, over every backend; after each, a normal job still runs."""

import socket
import subprocess

import pytest

from xgrader.sandbox.base import Limits, SandboxJob, Verdict

CANARY = "CANARY-xq-5521"


def run(backend, src, **kw):
    return backend.run(SandboxJob(argv=["python3", "-I", "-S", "x.py"], files={"x.py": src.encode()}, **kw))


@pytest.fixture(autouse=True)
def next_job_still_runs(backend, monkeypatch):
    monkeypatch.setenv("XGRADER_QUEUE_PASSWORD", CANARY)
    yield
    r = run(backend, "print(6*7)")
    assert r.verdict == Verdict.ok and r.stdout == "42\n"


def test_no_network_to_host_listener(backend):
    if backend.name == "unsafe":
        pytest.skip("unsafe backend shares the host network by design")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    try:
        r = run(backend, f"import socket\nfor a in [('127.0.0.1', {port}), ('169.254.169.254', 80)]:\n"
                         "    s = socket.socket(); s.settimeout(1)\n"
                         "    try: s.connect(a); print('CONNECTED', a)\n    except OSError as e: print('blocked', e.errno)\n"
                         "try: socket.getaddrinfo('example.com', 80); print('RESOLVED')\nexcept OSError: print('nodns')\n")
    finally:
        srv.close()
    assert "CONNECTED" not in r.stdout and "RESOLVED" not in r.stdout and r.stdout.count("blocked") == 2, r


def test_cannot_read_host_secrets(backend):
    if backend.name == "unsafe":
        pytest.skip("unsafe backend sees the host filesystem by design")
    r = run(backend, "import os\nfor p in ['/etc/shadow', '/root', '/work/main/pyproject.toml', '/etc/hostname']:\n"
                     "    try: open(p).read(); print('READ', p)\n    except OSError as e: print('no', p)\n"
                     "print(os.environ)\nimport glob\n"
                     "for p in glob.glob('/proc/*/environ'):\n    print(open(p, 'rb').read())\n")
    assert "READ" not in r.stdout, r
    assert CANARY not in r.stdout + r.stderr


def test_kill_minus_one_does_not_reach_host(backend):
    if backend.name == "unsafe":
        pytest.skip("unsafe: kill(-1) as root would hit the whole host")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        run(backend, "import os, signal\nos.kill(-1, signal.SIGKILL)\n")
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_daemonized_grandchild_is_gone(backend):
    src = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
           "        open('/tmp/work/alive', 'w').close(); time.sleep(300)\n    os._exit(0)\n"
           "print('parent done')\n")
    r = run(backend, src)
    assert r.verdict == Verdict.ok
    out = subprocess.run(["pgrep", "-f", "x.py"], capture_output=True, text=True).stdout
    assert out.strip() == "", out


def test_thread_bomb(backend):
    if backend.name == "unsafe":
        pytest.skip("unsafe backend has no pids limit")
    r = run(backend, "import threading, time\nn = 0\ntry:\n    while True:\n"
                     "        threading.Thread(target=time.sleep, args=(60,), daemon=True).start(); n += 1\n"
                     "except RuntimeError: print('capped', n)\n", limits=Limits(pids=32, wall_s=5))
    assert "capped" in r.stdout and int(r.stdout.split()[1]) < 32, r


def test_huge_line_and_cpu_ignore_sigxcpu(backend):
    r = run(backend, "import sys\nsys.stdout.write('x' * 50_000_000)\n", limits=Limits(output_bytes=100_000))
    assert r.verdict == Verdict.output
    r = run(backend, "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass\n",
            limits=Limits(cpu_s=1, wall_s=10))
    assert r.verdict == Verdict.cpu_time, r
