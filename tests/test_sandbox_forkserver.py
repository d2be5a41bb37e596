"""bwrap's fork servers (xgrader/backends/forkserver.py, sandbox/zygote.py):
a job forked from a server behaves like one started cold, shares nothing
with other jobs, holds no privilege, and the servers come and go with their
owner. The backend contract and the attack suite also run on both paths
(params `bwrap` and `bwrap_cold`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.support.fork import in_forked_child
from xgrader.config import Settings
from xgrader.backends import make_backend
from xgrader.backends.base import Limits, SandboxError, SandboxJob, Verdict
from xgrader.backends.cgroups import CgroupManager
from xgrader.backends.process import pid_alive as alive
from xgrader.backends.forkserver import ForkedSandbox

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def forking():
    b = make_backend(Settings(sandbox="bwrap"))
    yield b
    b.close()


@pytest.fixture
def cold():
    b = make_backend(Settings(sandbox="bwrap", sandbox_fork_server=False))
    yield b
    b.close()


def program(b, code: str, **kw) -> SandboxJob:
    return SandboxJob(argv=b.python_argv("exec", "m.py"), files={"m.py": textwrap.dedent(code).encode()}, **kw)


def run(b, code: str, **kw):
    return b.run(program(b, code, **kw))


def forked(b) -> bool:
    """Whether this backend's next runner job is forked by a server."""
    with b.start(program(b, "pass")) as running:
        kind = isinstance(running, ForkedSandbox)
        running.wait()
    return kind


SAME_AS_COLD = {
    "exit status": "raise SystemExit(7)",
    "exit message": "import sys\nsys.exit('bad thing')",
    "uncaught": "def f():\n    1/0\nf()",
    "atexit": "import atexit\natexit.register(lambda: print('bye'))\nprint('hi')",
    "unflushed stream": "f = open(1, 'w', closefd=False)\nf.write('raw fd')\nimport sys\nsys.stdout.write('no newline')",
    "custom stream flushed at exit": ("import io, os\n"
                                      "class Raw(io.RawIOBase):\n"
                                      "    def writable(self): return True\n"
                                      "    def write(self, b): return os.write(1, bytes(b))\n"
                                      "f = io.TextIOWrapper(io.BufferedWriter(Raw()))\nf.write('pending text')"),
    "thread joined at exit": ("import threading, time\n"
                              "def w():\n    time.sleep(0.2); print('thread done')\n"
                              "threading.Thread(target=w).start()\nprint('main done')"),
    "stdin": "print(input()[::-1])",
    "signal to itself": "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)",
    "process view": ("import os\nprint(os.getpid(), os.getppid(), open('/proc/self/comm').read().strip(),"
                     " os.getcwd(), os.listdir('.'), os.listdir('/tmp'), os.getuid())"),
    "environment": "import os, sys\nprint(sorted(k for k in os.environ if k != 'SANDBOX_SITE_DIRS'), sys.argv, sys.flags.isolated)",
    "loopback": ("import socket\ns = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
                 "c = socket.create_connection(s.getsockname()); print('loopback ok')"),
    "no network": ("import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n"
                   "except OSError as e:\n    print('refused', type(e).__name__)"),
}


@pytest.mark.parametrize("name", sorted(SAME_AS_COLD))
def test_forked_job_behaves_like_a_cold_one(forking, cold, name):
    assert forked(forking) and not forked(cold)
    results = []
    for b in (cold, forking):
        r = run(b, SAME_AS_COLD[name], stdin=b"abc\n")
        results.append((r.verdict, r.exit_code, r.signal, r.stdout, r.stderr))
    assert results[0] == results[1]
    assert results[1][0] in (Verdict.ok, Verdict.killed)


def test_the_job_holds_no_privilege(forking):
    r = run(forking, """
        import ctypes, os
        status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)
        print({k: status[k].strip() for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs', 'Seccomp')})
        libc = ctypes.CDLL(None, use_errno=True)
        print('unshare', libc.unshare(0x00020000), ctypes.get_errno())
        print('mount', libc.mount(b'tmpfs', b'/mnt', b'tmpfs', 0, None), ctypes.get_errno())
        print('init', open('/proc/1/comm').read().strip(), sorted(p for p in os.listdir('/proc') if p.isdigit()))
    """)
    lines = r.stdout.splitlines()
    zero = "0000000000000000"
    assert lines[0] == str({"CapInh": zero, "CapPrm": zero, "CapEff": zero, "CapBnd": zero, "CapAmb": zero,
                            "NoNewPrivs": "1", "Seccomp": "2"}), r
    assert lines[1] == "unshare -1 1" and lines[2] == "mount -1 1", r  # EPERM
    assert lines[3] == "init xg-job-init ['1', '2']", r  # no server, no other job in sight


def test_jobs_share_nothing(forking):
    """A first job leaves a file, a daemonized process, a listening port and an
    abstract socket; a second job, running at the same time, sees none of them."""
    first = program(forking, """
        import os, socket, sys, time
        open('/tmp/left-behind', 'w').write('x')
        if os.fork() == 0:
            os.setsid()
            time.sleep(60)
            os._exit(0)
        s = socket.socket(); s.bind(('127.0.0.1', 45678)); s.listen()
        u = socket.socket(socket.AF_UNIX); u.bind('\\0xgrader-test-abstract'); u.listen()
        print('ready', flush=True)
        time.sleep(3)
    """, limits=Limits(wall_s=20))
    running = forking.start(first)
    try:
        time.sleep(1.0)
        second = run(forking, """
            import os, socket
            print(os.path.exists('/tmp/left-behind'), sorted(p for p in os.listdir('/proc') if p.isdigit()))
            for family, addr in ((socket.AF_INET, ('127.0.0.1', 45678)), (socket.AF_UNIX, '\\0xgrader-test-abstract')):
                try:
                    socket.socket(family).connect(addr)
                    print('reached')
                except OSError as e:
                    print(type(e).__name__)
        """)
        assert second.stdout.splitlines() == ["False ['1', '2']", "ConnectionRefusedError", "ConnectionRefusedError"], second
    finally:
        result = running.wait()
    assert result.stdout == "ready\n" and result.verdict is Verdict.ok, result
    # The daemonized sleeper died with its job: the server has no child left.
    zygote = forking.forkservers.servers[("-I", "-S")].pids()[-1]
    assert Path(f"/proc/{zygote}/task/{zygote}/children").read_text().split() == []
    third = run(forking, "import os\nprint(os.path.exists('/tmp/left-behind'))")
    assert third.stdout == "False\n"


def test_limits_and_accounting_apply_to_the_forked_job(forking):
    limits = Limits(memory_mb=64, cpu_s=1, wall_s=10, pids=16)
    hog = run(forking, "x = bytearray(512 * 1024 * 1024)\nprint(len(x))", limits=limits)
    assert hog.verdict is Verdict.memory, hog
    spin = run(forking, "while True:\n    pass", limits=limits)
    # RLIMIT_CPU's SIGXCPU comes at 0.8-1.0 s of accounted CPU on this VM (cold alike).
    assert spin.verdict is Verdict.cpu_time and spin.cpu_s >= 0.5, spin
    bomb = run(forking, """
        import os
        n = 0
        try:
            for _ in range(100):
                if os.fork() == 0:
                    import time; time.sleep(5); os._exit(0)
                n += 1
        except OSError as e:
            print('stopped', n < 16, type(e).__name__)
    """, limits=limits)
    assert bomb.stdout.startswith("stopped True BlockingIOError"), bomb
    ok = run(forking, "print(sum(range(10)))")
    assert ok.stdout == "45\n" and ok.cpu_s is not None and 0 < ok.cpu_s < 1 and ok.peak_memory_mb > 0


def test_files_that_do_not_fit_are_a_sandbox_error(forking, cold):
    job = SandboxJob(argv=forking.python_argv("exec", "m.py"), limits=Limits(tmp_mb=1),
                     files={"m.py": b"print(1)", "big.bin": b"x" * (2 * 1024 * 1024)})
    with pytest.raises(SandboxError, match="No space left"):
        forking.run(job)
    assert run(forking, "print('next one fine')").stdout == "next one fine\n"
    # Cold, bwrap reports its child before it writes the files: the failure
    # comes back as the job's (docs/sandbox.md, known limits).
    r = cold.run(job)
    assert r.exit_code == 1 and r.stdout == "" and "No space left" in r.stderr


def test_a_dead_server_is_replaced_by_its_owner(forking):
    assert forked(forking)
    first = forking.forkservers.servers[("-I", "-S")].pids()
    os.kill(first[-1], signal.SIGKILL)  # the forking process itself
    time.sleep(0.2)
    assert run(forking, "print('still grading')").stdout == "still grading\n"
    assert forked(forking)
    again = forking.forkservers.servers[("-I", "-S")].pids()
    assert len(again) == 4 and again[-1] != first[-1]


def test_a_forked_child_uses_the_parents_server_and_falls_back_to_cold(forking):
    forking.prepare()
    zygote = forking.forkservers.servers[("-I", "-S")].pids()[-1]

    def child() -> list:
        a = forked(forking), run(forking, "print(1)").stdout
        os.kill(zygote, signal.SIGKILL)
        time.sleep(0.2)
        b = forked(forking), run(forking, "print(2)").stdout  # cold: only the owner starts servers
        return [*a, *b]

    assert in_forked_child(child) == [True, "1\n", False, "2\n"]


def test_servers_stop_with_close_and_with_a_killed_owner():
    script = textwrap.dedent("""
        import logging, structlog, sys, time
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        from xgrader.config import Settings
        from xgrader.backends import make_backend
        b = make_backend(Settings(sandbox='bwrap'))
        b.prepare()
        print(*b.forkservers.pids(), flush=True)
        time.sleep(60)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 8 and all(alive(p) for p in pids)
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)
    # Its servers' cgroups are orphans now: the next start-up removes them.
    manager = CgroupManager()
    assert manager.owned_by(owner.pid)
    make_backend(Settings(sandbox="bwrap", sandbox_fork_server=False)).cleanup_stale()
    assert manager.owned_by(owner.pid) == []

    before = set(manager.owned_by(os.getpid()))  # other tests' backends not yet collected
    b = make_backend(Settings(sandbox="bwrap"))
    b.prepare()
    pids = b.forkservers.pids()
    assert len(pids) == 8 and len(set(manager.owned_by(os.getpid())) - before) == 2
    b.close()
    assert not any(alive(p) for p in pids)  # a zombie bwrap init may wait for its reaper
    assert set(manager.owned_by(os.getpid())) <= before


def test_jobs_fork_in_parallel_from_one_server(forking):
    """Two threads (the daemon: two children) ask the same server at once."""
    outs: list[str] = []

    def one(i: int) -> None:
        for j in range(5):
            outs.append(run(forking, f"print({i * 10 + j})").stdout.strip())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outs, key=int) == [str(i * 10 + j) for i in range(3) for j in range(5)]


def test_no_daemon_configuration_in_any_environ_a_job_can_read(forking):
    """The job and its init come from a server started with PATH, LANG and
    PWD only (descriptors come as arguments); init is not even readable."""
    r = run(forking, """
        import os
        for p in ('/proc/self/environ', '/proc/1/environ'):
            try:
                print(sorted(e.split('=', 1)[0] for e in open(p).read().split('\\0') if e))
            except OSError as e:
                print(type(e).__name__)
    """)
    assert r.stdout.splitlines() == ["['LANG', 'PATH', 'PWD']", "PermissionError"], r


@pytest.mark.parametrize("path", ["forked", "cold"])
def test_every_thread_and_process_of_a_job_is_in_its_cgroups(forking, cold, path):
    """Jobs join their cgroups by writing "0" (v1: to `tasks`, which moves
    only the writing thread): the join happens before the job exists, so
    the threads and processes it starts are all inside, in every controller."""
    b = forking if path == "forked" else cold
    result = run(b, """
        import os, threading
        def where(tag):
            print(tag, sorted(l.split(':', 1)[1].strip() for l in open('/proc/thread-self/cgroup')), flush=True)
        where('main')
        t = threading.Thread(target=where, args=('thread',)); t.start(); t.join()
        if os.fork() == 0:
            where('child'); os._exit(0)
        os.wait()
    """, label="cgcheck")
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert set(lines) == {"main", "thread", "child"}, result
    assert len(set(lines.values())) == 1, lines
    cgroups = eval(lines["main"])  # [('controllers:path'), ...] as printed
    wanted = {"" if c == "unified" else c for c in b.cgroups.parents}   # v2: the "0::" line
    managed = [c for c in cgroups if c.split(":", 1)[0] in wanted]
    # Forked: the server's cgroup namespace shows the job's cgroup as a sibling
    # path; cold: bwrap unshares the cgroup namespace after the launcher joined,
    # so the job's cgroup is its namespace's root.
    inside = (lambda c: "/../xgrader-bw-cgcheck-" in c) if path == "forked" else (lambda c: c.endswith(":/"))
    assert len(managed) == len(wanted) and all(inside(c) for c in managed), cgroups


def _status_caps(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v, 16) for k, v in (l.split(":\t", 1) for l in lines if l.startswith("Cap"))}


def test_the_server_empties_its_bounding_set_before_serving(forking):
    """Jobs inherit an empty bounding and ambient set from the server (which
    dropped them once, keeping only its effective capabilities), so a job
    only clears its own sets: test_the_job_holds_no_privilege checks the job."""
    assert forked(forking)
    server = forking.forkservers.servers[("-I", "-S")].pids()[-1]
    caps = _status_caps(server)
    assert caps["CapBnd"] == 0 and caps["CapAmb"] == 0, caps
    assert caps["CapEff"] == (1 << 21) | (1 << 12) | (1 << 8), caps  # SYS_ADMIN, NET_ADMIN, SETPCAP


def test_init_and_job_share_the_jobs_own_namespaces(forking):
    """The job's init makes its mount, network and IPC namespaces and W
    builds the filesystem in them: both live in the same ones, none of them
    the server's."""
    job = program(forking, "import time\nprint('up', flush=True)\ntime.sleep(5)", limits=Limits(wall_s=20))
    running = forking.start(job)
    try:
        assert running.proc.stdout.readline() == b"up\n"
        init = running.proc.pid
        [w] = Path(f"/proc/{init}/task/{init}/children").read_text().split()
        server = forking.forkservers.servers[("-I", "-S")].pids()[-1]
        for ns in ("mnt", "net", "ipc", "pid"):
            mine = os.readlink(f"/proc/{init}/ns/{ns}")
            assert os.readlink(f"/proc/{w}/ns/{ns}") == mine, ns
            assert os.readlink(f"/proc/{server}/ns/{ns}") != mine, ns
        assert _status_caps(init)["CapEff"] == 0 and _status_caps(int(w))["CapEff"] == 0
    finally:
        running.kill()
        running.wait()


def test_an_edited_entry_script_is_compiled_again():
    """The server compiles runner.py once; a job runs what the file holds
    now, like a cold start would."""
    import shutil
    import tempfile

    from xgrader.config import DEFAULT_RUNNER_DIR
    base = Path(tempfile.mkdtemp(prefix="xgrader-runner-"))
    base.chmod(0o755)
    dest = base / "runner"
    shutil.copytree(DEFAULT_RUNNER_DIR, dest, ignore=shutil.ignore_patterns("__pycache__", "image"))
    b = make_backend(Settings(sandbox="bwrap", runner_dir=dest))
    try:
        assert forked(b)
        assert run(b, "print(1)").stdout == "1\n"
        script = dest / "runner.py"
        script.write_text("import sys\nsys.stdout.write('edited\\n')\n" + script.read_text())
        assert forked(b)
        assert run(b, "print(2)").stdout == "edited\n2\n"
    finally:
        b.close()
        shutil.rmtree(base, ignore_errors=True)


def test_the_jobs_of_a_killed_job_child_die_with_it(forking):
    """A job child (the daemon's per-submission process) SIGKILLed while its
    forked job runs: the server sees the job's status socket close and
    kills the job's init at once, whose pid namespace takes the job along
    (no waiting for a cgroup sweep)."""
    forking.prepare()
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            sb = forking.start(program(forking, "import time\ntime.sleep(600)\n", limits=Limits(wall_s=600)))
            os.write(w, str(sb.proc.pid).encode())
            time.sleep(600)
        finally:
            os._exit(1)
    os.close(w)
    init = int(os.read(r, 64))
    os.close(r)
    assert alive(init)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    deadline = time.monotonic() + 0.5  # at once; not the next cleanup_stale() of some daemon on this host
    while alive(init) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(init)
    forking.cleanup_stale()  # the dead child's job cgroup
