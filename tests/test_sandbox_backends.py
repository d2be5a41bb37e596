import sys
import time

from xgrader.sandbox.base import Limits, SandboxJob, Verdict

PY = ["python3", "-I", "-S", "x.py"]


def job(src: str, **kw) -> SandboxJob:
    return SandboxJob(argv=PY, files={"x.py": src.encode()}, **kw)


def test_ok_stdout_stdin(backend):
    r = backend.run(job("import sys; print(sys.stdin.read().upper()); sys.exit(3)", stdin=b"hi"))
    assert r.verdict == Verdict.ok and r.exit_code == 3 and r.stdout == "HI\n"


def test_wall_time(backend):
    t = time.monotonic()
    r = backend.run(job("import time; time.sleep(60)", limits=Limits(wall_s=1)))
    assert r.verdict == Verdict.wall_time and time.monotonic() - t < 5


def test_output_flood(backend):
    r = backend.run(job("while True: print('x'*1000)", limits=Limits(output_bytes=10_000)))
    assert r.verdict == Verdict.output and len(r.stdout) <= 10_000


def test_cpu_spin(backend):
    r = backend.run(job("while True: pass", limits=Limits(cpu_s=1, wall_s=10)))
    assert r.verdict == Verdict.cpu_time


def test_channel_roundtrip(backend):
    src = (
        "import os, json\n"
        "assert os.environ['XGRADER_CHANNEL'] == 'fd:3,4'\n"
        "r = os.fdopen(3, 'rb'); w = os.fdopen(4, 'wb')\n"
        "m = json.loads(r.readline()); w.write((json.dumps({'echo': m}) + '\\n').encode()); w.flush()\n"
        "w.write(b'[' * 100 + b'\\n'); w.flush()\n"
    )
    with backend.start(job(src, channel=True)) as sb:
        sb.channel.send({"op": "ping", "id": 1})
        assert sb.channel.recv(5) == {"echo": {"op": "ping", "id": 1}}
        import pytest
        from xgrader.sandbox.base import ChannelError
        with pytest.raises(ChannelError):
            sb.channel.recv(5)
        assert sb.wait().verdict == Verdict.ok


def test_memory_bomb(backend):
    if backend.name == "unsafe":
        import pytest
        pytest.skip("unsafe backend has no memory limit by design (rlimits only)")
    r = backend.run(job("x = []\nwhile True: x.append(b'x' * 10_000_000)", limits=Limits(memory_mb=64, wall_s=10)))
    assert r.verdict == Verdict.memory, r


def test_fork_bomb_and_no_leftovers(backend):
    src = "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass\n"
    r = backend.run(job(src, limits=Limits(wall_s=2, pids=16)))
    assert r.verdict in (Verdict.wall_time, Verdict.cpu_time, Verdict.killed)
    r2 = backend.run(job("print('fine')"))
    assert r2.verdict == Verdict.ok and r2.stdout == "fine\n"
