"""Warm pool (xgrader/backends/warm.py): pre-started bwrap runners, each used once."""

import os
import time

import pytest

from xgrader.config import Settings
from xgrader.backends import make_backend
from xgrader.backends.base import Limits, SandboxJob, Verdict
from xgrader.backends.warm import WarmPool
from tests.support.fork import in_forked_child

MOD = b"import os\ndef f(x):\n    return x * 2\ndef pid():\n    return os.getpid()\n"


@pytest.fixture
def pool():
    p = make_backend(Settings(sandbox="bwrap", warm_pool=2))
    assert isinstance(p, WarmPool)
    before = set(p.inner.cgroups.owned_by(os.getpid()))  # other tests' backends not yet collected
    yield p
    p.close()
    # Nothing of the pool survives close(): no new cgroup created by this process.
    assert set(p.inner.cgroups.owned_by(os.getpid())) <= before


def serve(pool, files=None, limits=None, label="t"):
    job = SandboxJob(argv=pool.python_argv(), files=files or {"m.py": MOD}, channel=True, label=label,
                     limits=limits or Settings().limits_for(None))
    return pool.start(job)


def ask(sb, req, rid):
    sb.channel.send({**req, "id": rid})
    while True:
        msg = sb.channel.recv(10)
        if msg.get("id") == rid:
            return msg


def test_warm_hit_is_fast_and_single_use(pool):
    assert pool.wait_ready(2, timeout=15)
    procs = set()
    for i in range(3):
        t = time.perf_counter()
        sb = serve(pool)
        assert ask(sb, {"op": "load", "module": "m", "path": "m.py"}, 1)["ok"]
        assert ask(sb, {"op": "call", "target": "f", "args": [i], "kwargs": {}}, 2)["value"] == 2 * i
        procs.add(next(iter(sb.cgroup.dirs.values())).name)  # one sandbox (cgroup) per job
        # Leave a trace; the next submission must not see it.
        assert ask(sb, {"op": "eval", "expr": "open('/tmp/work/trace', 'w').write('x')"}, 3)["ok"]
        sb.kill()
        assert sb.wait().verdict in (Verdict.killed, Verdict.ok)
        if i == 0:
            assert (time.perf_counter() - t) < 1.0
    assert pool.hits >= 2 and len(procs) == 3
    sb = serve(pool)
    assert ask(sb, {"op": "eval", "expr": "__import__('os').path.exists('/tmp/work/trace')"}, 1)["value"] is False
    sb.kill()
    sb.wait()


def test_job_limits_apply_after_activation(pool):
    assert pool.wait_ready(1, timeout=15)
    hits = pool.hits
    limits = Settings().limits_for(None).model_copy(update={"memory_mb": 48, "wall_s": 5})
    sb = serve(pool, {"m.py": b"def bomb():\n    x = []\n    while True: x.append(b'x' * 10_000_000)\n"}, limits)
    assert pool.hits == hits + 1
    assert ask(sb, {"op": "load", "module": "m", "path": "m.py"}, 1)["ok"]
    sb.channel.send({"op": "call", "target": "bomb", "args": [], "kwargs": {}, "id": 2})
    r = sb.wait()
    assert r.verdict is Verdict.memory and r.peak_memory_mb <= 49, r
    assert r.wall_s < 5  # the clock started at activation, not at pre-start


def test_wall_clock_from_activation(pool):
    assert pool.wait_ready(1, timeout=15)
    time.sleep(1.5)  # idle in the pool longer than the job's wall limit
    limits = Settings().limits_for(None).model_copy(update={"wall_s": 1.0})
    sb = serve(pool, limits=limits)
    assert ask(sb, {"op": "load", "module": "m", "path": "m.py"}, 1)["ok"]
    r = sb.wait()
    assert r.verdict is Verdict.wall_time and 0.9 <= r.wall_s < 3, r


def test_other_rlimits_switch_the_key(pool):
    assert pool.wait_ready(1, timeout=15)
    other = Settings().limits_for(None).model_copy(update={"open_files": 40})
    misses = pool.misses
    sb = serve(pool, limits=other)
    assert pool.misses == misses + 1  # cold: rlimits are fixed at start
    assert ask(sb, {"op": "eval", "expr": "__import__('resource').getrlimit(7)"}, 1)["value"] == {"$tuple": [40, 40]}
    sb.kill()
    sb.wait()
    assert pool.wait_ready(2, timeout=15)
    sb = serve(pool, limits=other)
    assert pool.hits >= 1
    assert ask(sb, {"op": "eval", "expr": "__import__('resource').getrlimit(7)"}, 1)["value"] == {"$tuple": [40, 40]}
    sb.kill()
    sb.wait()


def test_forked_child_fills_its_own_pool(pool):
    """The daemon's model: a forked child never takes the parent's sandboxes."""
    assert pool.wait_ready(2, timeout=15)
    parent_pids = {sb.proc.pid for sb in pool._idle}
    def child() -> str:
        # No prewarm() call: a plain fork starts the child's own filling.
        with pool._cv:
            filling = pool._thread is not None
        assert filling and pool.wait_ready(1, timeout=15)
        sb = serve(pool)
        ok = ask(sb, {"op": "load", "module": "m", "path": "m.py"}, 1)["ok"]
        mine = sb.proc.pid not in parent_pids and pool.hits == 1
        sb.kill()
        sb.wait()
        pool.close()
        left = pool.inner.cgroups.owned_by(os.getpid())
        return f"{ok} {mine} {len(left)}"

    out = in_forked_child(child)
    assert out == "True True 0", out
    assert {sb.proc.pid for sb in pool._idle} == parent_pids  # untouched, still ours
    # A subprocess spawn (fork-then-exec with a preexec_fn) starts nothing in its child.
    import subprocess
    out = subprocess.run(["/bin/sh", "-c", "echo ok"], preexec_fn=lambda: None, capture_output=True, text=True)
    assert out.stdout == "ok\n" and pool.idle == 2
    sb = serve(pool)
    assert ask(sb, {"op": "call", "target": "f", "args": [4], "kwargs": {}}, 1)["ok"] is False  # not loaded yet
    sb.kill()
    sb.wait()


def test_large_files_and_batch_jobs_go_cold(pool):
    misses = pool.misses
    sb = serve(pool, {"m.py": MOD, "big.bin": b"\0" * (3 * 1024 * 1024)})
    assert ask(sb, {"op": "load", "module": "m", "path": "m.py"}, 1)["ok"]
    sb.kill()
    sb.wait()
    r = pool.run(SandboxJob(argv=["python3", "-I", "-S", "-c", "print(1)"]))
    assert r.stdout == "1\n" and pool.misses == misses + 2


def test_daemon_job_child_starts_warm(pool, tmp_path):
    """The daemon's model end to end: the supervisor forks a job child; the fork
    itself starts the child's pool filling, the parent's pool never fills."""
    from xgrader.daemon.supervisor import Supervisor
    out = tmp_path / "child.txt"

    def job(reporter) -> None:
        filling = pool._thread is not None  # started by the fork, before any call
        ready = filling and pool.wait_ready(1, timeout=15)
        sb = serve(pool)
        loaded = ask(sb, {"op": "load", "module": "m", "path": "m.py"}, 1)["ok"]
        out.write_text(f"{ready} {pool.hits} {loaded}")
        sb.kill()
        sb.wait()
        pool.close()

    sup = Supervisor()
    handle = sup.spawn(job, timeout=30, label="warm-child")
    deadline = time.monotonic() + 30
    while sup.children and time.monotonic() < deadline:
        sup.poll()
        time.sleep(0.05)
    assert handle.exit_code == 0 and out.read_text() == "True 1 True", (handle.exit_code, out.read_text())
    assert pool.idle == 0 and pool._thread is None  # nothing started in the parent
    assert pool.inner.cgroups.owned_by(handle.pid) == []
