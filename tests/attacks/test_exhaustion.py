"""Resource exhaustion (threat model): each attack is killed at its limit with
a clear verdict, within the wall clock, and the next job is unaffected.

Also in the non-root configuration (the bwrap_user* params: no cgroups, so
rlimits and the host's sampling), where the one documented difference is
the CPU quota (test_cpu_spin_on_every_core), and on the author's rootless
podman (podman_user: the same, and a one-process memory bomb ends with
MemoryError instead of the memory verdict: test_memory_bomb)."""

import os
import resource
import time

from tests.attacks.conftest import leaks, leftover_processes
from tests.attacks.support import SMALL, attack, lines
from xgrader.backends.base import Verdict

PROMPT = SMALL.wall_s + 2.0  # a verdict must come this soon at the latest


def timed(backend, src, **kw):
    t = time.monotonic()
    r = attack(backend, src, **kw)
    assert time.monotonic() - t < kw.get("wall_s", SMALL.wall_s) + 2.0, r
    assert not leaks(r.stdout, r.stderr)
    return r


def test_fork_bomb(sandbox):
    r = timed(sandbox, "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass\n")
    assert r.verdict in (Verdict.wall_time, Verdict.cpu_time, Verdict.killed), r


def test_fork_bomb_children_sleep(sandbox):
    """Children that park instead of spinning: the pids limit caps them, the wall ends them."""
    src = ("import os, time\nn = 0\nwhile True:\n    try:\n        if os.fork() == 0:\n            time.sleep(600)\n"
           "        n += 1\n    except OSError:\n        print('capped', n, flush=True); time.sleep(600)\n")
    r = timed(sandbox, src)
    assert r.verdict is Verdict.wall_time and int(lines(r)[0][1]) < SMALL.pids, r


def test_thread_bomb(sandbox):
    r = timed(sandbox, "import threading, time\nn = 0\ntry:\n    while True:\n"
                       "        threading.Thread(target=time.sleep, args=(60,), daemon=True).start(); n += 1\n"
                       "except RuntimeError: print('capped', n, flush=True)\n")
    assert "capped" in r.stdout and int(lines(r)[0][1]) < SMALL.pids, r


def test_memory_bomb(sandbox):
    r = timed(sandbox, "x = []\nwhile True: x.append(b'x' * 10_000_000)\n")
    if getattr(sandbox, "param_name", "") == "podman_user":
        # A rootless engine without cgroup limits: RLIMIT_DATA refuses the
        # allocation and nothing on the host saw the process's peak (no rusage
        # of a container's process): it ends with MemoryError, which grading
        # reports as the memory limit (scoring.MEMORY_ERROR).
        assert r.verdict is Verdict.memory or (r.exit_code == 1 and "MemoryError" in r.stderr), r
        return
    assert r.verdict is Verdict.memory, r


def test_memory_bomb_split_over_processes(sandbox):
    """Per-process rlimits would not stop this; the job-wide memory limit does."""
    src = ("import os, time\nfor _ in range(6):\n    if os.fork() == 0:\n        x = b'x' * (40 * 2**20)\n"
           "        time.sleep(30)\nx = b'y' * (40 * 2**20)\ntime.sleep(30)\n")
    r = timed(sandbox, src)
    if r.verdict is Verdict.cpu_time and getattr(sandbox, "param_name", "") in ("bwrap", "bwrap_cold", "bwrap_warm"):
        # On a loaded host the cgroup can thrash at its limit (evicting and
        # re-reading the interpreter's file pages) past cpu_s before the
        # kernel's OOM kill: the job-wide limit still held it at 128 MB.
        assert r.peak_memory_mb is not None and r.peak_memory_mb <= SMALL.memory_mb, r
        return
    assert r.verdict is Verdict.memory, r


def test_cpu_spin(sandbox):
    r = timed(sandbox, "while True: pass\n", cpu_s=1, wall_s=8)  # wall leaves room on a busy CI host
    assert r.verdict is Verdict.cpu_time, r


def test_cpu_spin_ignoring_sigxcpu(sandbox):
    r = timed(sandbox, "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass\n",
              cpu_s=1, wall_s=8)
    assert r.verdict is Verdict.cpu_time, r


def test_cpu_spin_on_every_core(sandbox):
    """Four spinning processes: the CPU quota keeps the job to about one core.
    Without cgroups (rlimit mode) there is no quota: the job may use every
    core until its wall limit, and its CPU time is still accounted."""
    src = "import os\nfor _ in range(3):\n    if os.fork() == 0: break\nwhile True: pass\n"
    r = timed(sandbox, src, cpu_s=30)
    assert r.verdict is Verdict.wall_time, r
    cores = os.cpu_count() if getattr(sandbox, "rlimit_mode", False) else 1.25
    assert r.cpu_s is not None and 0.1 < r.cpu_s <= r.wall_s * cores + 0.3, r


def test_sleep_forever(sandbox):
    r = timed(sandbox, "import time\ntime.sleep(10**6)\n")
    assert r.verdict is Verdict.wall_time and r.wall_s < PROMPT, r


def test_sleep_forever_ignoring_signals_in_new_session(sandbox):
    src = ("import os, signal, time\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP): signal.signal(s, signal.SIG_IGN)\n"
           "if os.fork() == 0:\n    os.setsid(); time.sleep(10**6)\ntime.sleep(10**6)\n")
    r = timed(sandbox, src)
    assert r.verdict is Verdict.wall_time, r


def test_stdout_flood(sandbox):
    r = timed(sandbox, "while True: print('spam' * 250)\n")
    assert r.verdict is Verdict.output and len(r.stdout) <= SMALL.output_bytes and r.stdout_truncated, r


def test_stderr_flood(sandbox):
    r = timed(sandbox, "import sys\nwhile True: sys.stderr.write('e' * 4096)\n")
    assert r.verdict is Verdict.output and len(r.stderr) <= SMALL.output_bytes, r


def test_one_huge_line(sandbox):
    r = timed(sandbox, "import sys\nsys.stdout.write('x' * 50_000_000)\n")
    assert r.verdict is Verdict.output and "\n" not in r.stdout and len(r.stdout) <= SMALL.output_bytes, r


def test_filling_tmp(sandbox):
    src = ("import os\nn = 0\ntry:\n    for i in range(1000):\n        with open(f'/tmp/fill{i}', 'wb') as f:\n"
           "            for _ in range(4): f.write(b'x' * 2**20); n += 1\nexcept OSError as e:\n"
           "    print('stopped', e.errno, n)\n")
    r = timed(sandbox, src)
    stopped = lines(r)[0]
    assert stopped[:2] == ["stopped", "28"] and int(stopped[2]) <= SMALL.tmp_mb, r  # ENOSPC at tmp_mb


def test_one_huge_file(sandbox):
    src = ("n = 0\ntry:\n    with open('/tmp/huge', 'wb') as f:\n        while True: f.write(b'x' * 2**20); f.flush(); n += 1\n"
           "except OSError as e:\n    print('stopped', e.errno, n)\n")
    r = timed(sandbox, src)
    assert lines(r)[0][:2] == ["stopped", "27"] and int(lines(r)[0][2]) <= SMALL.file_mb, r  # EFBIG at file_mb


def test_descriptor_exhaustion(sandbox):
    src = ("import os\nfds = []\ntry:\n    while True: fds.append(os.open('/dev/null', os.O_RDONLY))\n"
           "except OSError as e:\n    print('stopped', e.errno, len(fds))\n")
    r = timed(sandbox, src)
    assert lines(r)[0][:2] == ["stopped", "24"] and int(lines(r)[0][2]) < SMALL.open_files, r  # EMFILE


def test_daemonized_grandchild_does_not_outlive_the_job(sandbox):
    src = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
           "        time.sleep(300)\n    os._exit(0)\nprint('parent done')\n")
    r = timed(sandbox, src)
    assert r.verdict is Verdict.ok and r.stdout == "parent done\n", r
    time.sleep(0.2)
    assert leftover_processes(sandbox) == [], leftover_processes(sandbox)


def test_grader_memory_stays_flat(sandbox):
    """Floods are capped while streaming: the grader never holds more than the cap."""
    def rss_mb() -> float:  # the high-water mark: a buffered 200 MB line would raise it for good
        if hasattr(sandbox, "rss_mb"):  # the non-root configuration: the grader is the user's process
            return sandbox.rss_mb()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    attack(sandbox, "print('warm-up')\n")
    before = rss_mb()
    for src in ("import sys\nsys.stdout.write('x' * 200_000_000)\n",
                "import sys\nwhile True: sys.stderr.write('y' * 65536)\n",
                "import os\nwhile True: os.write(1, b'z' * 1_000_000)\n"):
        r = attack(sandbox, src, output_bytes=1_000_000, wall_s=5, memory_mb=512)
        assert r.verdict is Verdict.output, r
    assert rss_mb() - before < 40, (before, rss_mb())
