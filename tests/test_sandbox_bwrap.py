"""bwrap-specific properties: identity, seccomp, env, file ownership."""

import os
from pathlib import Path

import pytest

from xgrader.config import Settings
from xgrader.backends.base import Limits, SandboxError, SandboxJob, Verdict
from xgrader.backends.bwrap import BwrapBackend


@pytest.fixture(scope="module")
def bw():
    return BwrapBackend(Settings(sandbox="bwrap"))


def run(bw, src, **kw):
    return bw.run(SandboxJob(argv=["python3", "-I", "-S", "x.py"], files={"x.py": src.encode()}, **kw))


def test_runs_as_nobody_without_secrets(bw, monkeypatch):
    monkeypatch.setenv("XGRADER_QUEUE_PASSWORD", "CANARY-bwrap-7731")
    r = run(bw, "import os\nprint(os.getuid(), os.getgid())\n"
                "import glob\n"
                "for p in glob.glob('/proc/*/environ'):\n"
                "    try: print(open(p,'rb').read())\n"
                "    except OSError as e: print('ERR', p)\n"
                "print(dict(os.environ))\n")
    assert r.verdict == Verdict.ok, r
    assert "CANARY" not in r.stdout + r.stderr
    assert r.stdout.split()[0] != "0"


def test_seccomp_denies_unshare_and_ptrace(bw):
    src = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "for name, args in [('unshare', (0x10000000,)), ('unshare', (0x40000000,)), ('ptrace', (0, 0, 0, 0)), ('chroot', (b'/tmp',))]:\n"
           "    rc = getattr(libc, name)(*args); print(name, rc, ctypes.get_errno())\n")
    r = run(bw, src)
    lines = [l.split() for l in r.stdout.splitlines()]
    assert len(lines) == 4, r
    for name, rc, err in lines:
        assert rc == "-1" and int(err) == 1, (name, rc, err)


def test_filesystem_readonly_and_tmp_capped(bw):
    src = ("import os\nfor p in ['/usr/x', '/etc/x', '/opt/xgrader/x', '/x', '/dev/x']:\n"
           "    try: open(p, 'w'); print('WROTE', p)\n    except OSError as e: print('denied', p)\n"
           "try:\n    f = open('/tmp/big', 'wb')\n    for _ in range(100): f.write(b'x' * 1024 * 1024); f.flush()\n"
           "    print('FILLED')\nexcept OSError as e: print('full', e.errno)\n")
    r = run(bw, src, limits=Limits(tmp_mb=4, file_mb=64))
    assert "WROTE" not in r.stdout and "FILLED" not in r.stdout, r
    assert "full 28" in r.stdout  # ENOSPC from the size-capped tmpfs


def test_rlimits_complete_and_file_size(bw):
    src = ("import resource as r\n"
           "for n in ['RLIMIT_CPU', 'RLIMIT_FSIZE', 'RLIMIT_NOFILE', 'RLIMIT_CORE']:\n"
           "    print(n, *r.getrlimit(getattr(r, n)))\n"
           "try:\n    open('/tmp/f', 'wb').write(b'x' * (3 * 1024 * 1024)); print('BIG')\n"
           "except OSError as e: print('efbig', e.errno)\n")
    r = run(bw, src, limits=Limits(cpu_s=2, file_mb=2, open_files=32, tmp_mb=16))
    got = {l.split()[0]: l.split()[1:] for l in r.stdout.splitlines()}
    assert got["RLIMIT_CPU"] == ["2", "3"] and got["RLIMIT_FSIZE"] == [str(2 * 2**20)] * 2, r
    assert got["RLIMIT_NOFILE"] == ["32", "32"] and got["RLIMIT_CORE"] == ["0", "0"]
    assert got["efbig"] == ["27"] and "BIG" not in got


def test_cgroup_limits_written_and_removed(bw):
    if not bw.cgroups.usable:
        pytest.fail("cgroups not writable: the bwrap backend needs them for memory/pids/cpu")
    sb = bw.start(SandboxJob(argv=["python3", "-I", "-S", "-c", "import time; time.sleep(30)"],
                             limits=Limits(memory_mb=96, pids=12)))
    cg = sb.cgroup
    try:
        if cg.v2:
            d = cg.dirs["unified"]
            assert (d / "memory.max").read_text().strip() == str(96 * 2**20)
            assert (d / "pids.max").read_text().strip() == "12"
            assert (d / "cpu.max").read_text().split()[0] == "100000"
        else:
            assert (cg.dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == str(96 * 2**20)
            assert (cg.dirs["memory"] / "memory.memsw.limit_in_bytes").read_text().strip() == str(96 * 2**20)
            assert (cg.dirs["pids"] / "pids.max").read_text().strip() == "12"
            assert (cg.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "100000"
        import time
        deadline = time.monotonic() + 3
        while len(cg.pids()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(cg.pids()) >= 3  # bwrap, its pid-1 and the job: all inside
    finally:
        sb.kill()
        sb.wait()
    assert not any(d.exists() for d in cg.dirs.values())


CRASHER = """
import sys, time
from xgrader.config import Settings
from xgrader.backends.bwrap import BwrapBackend
from xgrader.backends.base import SandboxJob
b = BwrapBackend(Settings(sandbox="bwrap"))
sb = b.start(SandboxJob(argv=["python3", "-I", "-S", "-c", "import time; time.sleep(300)"], label="crashme"))
time.sleep(0.3)
print("CG", sb.proc.pid, next(iter(sb.cgroup.dirs.values())), flush=True)
time.sleep(300)
"""


def test_restart_cleans_crashed_predecessor(bw):
    """A SIGKILLed daemon leaves an orphan cgroup (its sandbox dies with it:
    --die-with-parent); the next one's cleanup_stale removes it."""
    import subprocess
    import sys
    import time
    from pathlib import Path
    proc = subprocess.Popen([sys.executable, "-c", CRASHER], stdout=subprocess.PIPE, text=True)
    try:
        line = ""
        while not line.startswith("CG "):  # structlog may print first
            line = proc.stdout.readline()
            assert line, "crasher died"
        _, pid, cgdir = line.split()
    finally:
        proc.kill()
        proc.wait()
    cgdir = Path(cgdir)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "bwrap outlived its killed parent"
    assert cgdir.exists()
    BwrapBackend(Settings(sandbox="bwrap")).cleanup_stale()
    assert not cgdir.exists()


def test_cleanup_stale_spares_live_cgroups(bw):
    sb = bw.start(SandboxJob(argv=["python3", "-I", "-S", "-c", "import time; time.sleep(30)"]))
    try:
        bw.cleanup_stale()  # our own job's creator (this process) is alive
        assert all(d.exists() for d in sb.cgroup.dirs.values())
        assert sb.proc.poll() is None
    finally:
        sb.kill()
        sb.wait()


def test_kill_label_removes_its_cgroups(bw):
    sb = bw.start(SandboxJob(argv=["python3", "-I", "-S", "-c", "import time; time.sleep(30)"], label="xg-1-lbl"))
    other = bw.start(SandboxJob(argv=["python3", "-I", "-S", "-c", "import time; time.sleep(30)"], label="xg-1-lbl2"))
    try:
        bw.kill_label("xg-1-lbl")
        assert not any(d.exists() for d in sb.cgroup.dirs.values())
        assert all(d.exists() for d in other.cgroup.dirs.values())
        assert sb.wait(timeout=5).verdict is Verdict.killed
    finally:
        other.kill()
        other.wait()


def test_sandbox_venv_bound_read_only():
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path
    top = Path(tempfile.mkdtemp(prefix="xgrader-venv-test-"))
    top.chmod(0o755)  # bwrap runs as nobody: the venv must be readable by it
    try:
        _venv_case(top / "venv")
    finally:
        shutil.rmtree(top)
    # Not readable by nobody: check() says so instead of every job failing.
    hidden = Path(tempfile.mkdtemp(prefix="xgrader-venv-test-"))
    try:
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(hidden / "v")], check=True)
        with pytest.raises(SandboxError, match="not readable"):
            BwrapBackend(Settings(sandbox="bwrap", sandbox_venv=hidden / "v")).check()
    finally:
        shutil.rmtree(hidden)


def _venv_case(venv):
    import subprocess
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "course_pkg.py").write_text("VALUE = 'from-the-venv'\n")
    b = BwrapBackend(Settings(sandbox="bwrap", sandbox_venv=venv))
    b.check()
    src = ("import sys, course_pkg, pytest\nprint(course_pkg.VALUE, sys.prefix)\n"
           "try: open(course_pkg.__file__, 'a'); print('WRITABLE')\nexcept OSError: print('ro')\n")
    r = b.run(SandboxJob(argv=["python3", "-I", "x.py"], files={"x.py": src.encode()}))
    assert r.stdout.split() == ["from-the-venv", "/opt/venv", "ro"], r


def test_cgroup_v2_delegation_moves_the_daemon_to_a_leaf(tmp_path, monkeypatch):
    """cgroup v2 logic on a file tree standing in for /sys/fs/cgroup (this host
    runs v1; the kernel part is exercised by every bwrap test there): the
    controllers are enabled for job cgroups, and when the daemon's own cgroup
    holds processes (EBUSY) they move to a leaf first; job limits land in the
    v2 files."""
    import errno
    from xgrader.backends import cgroups
    root = tmp_path / "cg"
    svc = root / "system.slice" / "xgrader.service"
    svc.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (svc / "cgroup.controllers").write_text("cpu memory pids\n")
    (svc / "cgroup.subtree_control").write_text("\n")
    (svc / "cgroup.procs").write_text("4242\n4343\n")
    monkeypatch.setattr(cgroups, "_own_paths", lambda: {"": "/system.slice/xgrader.service"})
    real_write = cgroups._write
    moved = []

    def write(path, value):
        path = Path(path)
        if path.name == "cgroup.subtree_control" and not moved:
            raise OSError(errno.EBUSY, "Device or resource busy")
        if path.name == "cgroup.procs" and path.parent.name == cgroups.DAEMON_LEAF:
            moved.append(value)
        real_write(path, value)
    monkeypatch.setattr(cgroups, "_write", write)
    m = cgroups.CgroupManager(root=root)
    assert m.v2 and m.usable and m.parents == {"unified": svc}
    assert moved == ["4242", "4343"] and (svc / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    cg = m.create("xg-1-v2", Limits(memory_mb=64, pids=10))
    d = cg.dirs["unified"]
    assert d.parent == svc and (d / "memory.max").read_text() == str(64 * 2**20)
    assert (d / "pids.max").read_text() == "10"
    for name in ("memory.swap.max", "cpu.max"):  # the kernel creates these with the directory
        (d / name).write_text("max")
    cg.set_limits(Limits(memory_mb=32, pids=8))  # as on warm activation
    assert (d / "memory.swap.max").read_text() == "0" and (d / "cpu.max").read_text() == "100000 100000"
    assert (d / "memory.max").read_text() == str(32 * 2**20) and (d / "pids.max").read_text() == "8"
    # A second manager (e.g. after the move) finds the same parent, not the leaf.
    monkeypatch.setattr(cgroups, "_own_paths", lambda: {"": f"/system.slice/xgrader.service/{cgroups.DAEMON_LEAF}"})
    assert cgroups.CgroupManager(root=root).parents == {"unified": svc}
    # Not delegated: unusable, rlimits only, and why.
    (svc / "cgroup.controllers").write_text("cpu\n")
    m = cgroups.CgroupManager(root=root)
    assert not m.usable and m.reason == f"memory and pids are not delegated to {svc}"
    # A user's session scope (systemd-run --user --scope -p Delegate=yes): the
    # same path as the service's, as that user.
    scope = root / "user.slice" / "user-1000.slice" / "user@1000.service" / "app.slice" / "run-r1.scope"
    scope.mkdir(parents=True)
    (scope / "cgroup.controllers").write_text("cpu memory pids\n")
    (scope / "cgroup.subtree_control").write_text("\n")
    (scope / "cgroup.procs").write_text("5151\n")
    moved.clear()
    monkeypatch.setattr(cgroups, "_own_paths", lambda: {"": "/" + str(scope.relative_to(root))})
    m = cgroups.CgroupManager(root=root)
    assert m.usable and m.reason is None and m.parents == {"unified": scope} and moved == ["5151"], m.reason


def test_student_code_imports_course_packages_without_site_hooks():
    """The runner (-I -S) gets the sandbox venv's site-packages via
    SANDBOX_SITE_DIRS: student code imports a course package, while a *.pth or
    sitecustomize (shipped by the student, or in the venv) runs nothing."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path
    top = Path(tempfile.mkdtemp(prefix="xgrader-venv-test-"))
    top.chmod(0o755)  # bwrap runs as nobody: the venv must be readable by it
    try:
        venv = top / "venv"
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
        site = next(venv.glob("lib/python3*/site-packages"))
        (site / "coursepkg").mkdir()
        (site / "coursepkg" / "__init__.py").write_text("from coursepkg.core import VALUE\n")
        (site / "coursepkg" / "core.py").write_text("VALUE = 'course-42'\n")
        (site / "zz_hook.pth").write_text("import sys; print('VENV-PTH-RAN')\n")
        b = BwrapBackend(Settings(sandbox="bwrap", sandbox_venv=venv))
        assert b.site_dirs.split(":")[0].startswith("/opt/venv/lib/python3"), b.site_dirs
        files = {
            "x.py": b"import sys, coursepkg\nprint(coursepkg.VALUE, coursepkg.__file__)\n"
                    b"print('site' in sys.modules, sys.path.index('/tmp/work') < sys.path.index(coursepkg.__path__[0].rsplit('/', 1)[0]))\n",
            "sitecustomize.py": b"print('SITECUSTOMIZE-RAN')\n",
            "usercustomize.py": b"print('USERCUSTOMIZE-RAN')\n",
            "evil.pth": b"import sys; print('STUDENT-PTH-RAN')\n",
        }
        r = b.run(SandboxJob(argv=b.python_argv("exec", "x.py"), files=files))
        assert r.verdict == Verdict.ok, r
        assert r.stdout.split() == ["course-42", f"{b.site_dirs.split(':')[0]}/coursepkg/__init__.py",
                                    "False", "True"], r
        assert "RAN" not in r.stdout + r.stderr
        # Serve mode (the io and pytest kinds' student sandbox) takes the same path.
        from xgrader.handlers.student import StudentRunner
        files["submission.py"] = b"import coursepkg\ndef value():\n    return coursepkg.VALUE\n"
        sr = StudentRunner(b, files, Limits(wall_s=20), module="submission", entry="submission.py",
                           label="test-site-dirs")
        try:
            assert sr.start(10)["ok"]
            reply = sr.request({"op": "call", "target": "value", "args": [], "kwargs": {}}, 10)
            assert reply["ok"] and reply["value"] == "course-42", reply
            assert "RAN" not in reply.get("stdout", "") + reply.get("stderr", ""), reply
        finally:
            sr.close()
    finally:
        shutil.rmtree(top)


def test_launcher_failure_is_a_sandbox_error_not_a_verdict(bw, monkeypatch):
    """The spawn chain (dash: cgroup join + ulimits, setpriv, bwrap) failing
    before bwrap reports its child: SandboxError at start, cgroup removed."""
    import xgrader.backends.bwrap as bwrap_mod
    before = set(bw.cgroups.owned_by(os.getpid()))
    monkeypatch.setattr(bwrap_mod, "SETPRIV", "/nonexistent/setpriv")
    with pytest.raises(SandboxError, match="cannot start the sandbox: .*setpriv"):
        bw.start(SandboxJob(argv=["python3", "-I", "-S", "-c", "pass"]))
    assert set(bw.cgroups.owned_by(os.getpid())) <= before  # (another backend collected meanwhile may remove its own)


def test_spawned_with_vfork_job_sees_only_its_own_fds(bw):
    """No preexec_fn (vfork, fds passed at their host numbers): the runner
    still finds its channel and files, and nothing else of the host's leaks
    in, even an inheritable fd."""
    from xgrader.handlers.student import StudentRunner
    host_fd = os.open("/etc/hostname", os.O_RDONLY)
    os.set_inheritable(host_fd, True)
    # Push the job's fds above its RLIMIT_NOFILE (32): they are passed as numbered.
    padding = [os.open("/dev/null", os.O_RDONLY) for _ in range(40)]
    try:
        src = (b"import os\ndef fds():\n    out = []\n    for f in os.listdir('/proc/self/fd'):\n"
               b"        try: out.append(os.readlink('/proc/self/fd/' + f))\n"
               b"        except OSError: pass\n    return sorted(out)\n"
               b"def data():\n    return open('data/in.txt').read()\n")
        sr = StudentRunner(bw, {"submission.py": src, "data/in.txt": b"payload"}, Limits(wall_s=20, open_files=32),
                           module="submission", entry="submission.py", label="test-fds")
        try:
            assert sr.start(10)["ok"]
            call = {"op": "call", "args": [], "kwargs": {}}
            assert sr.request({**call, "target": "data"}, 10)["value"] == "payload"
            links = sr.request({**call, "target": "fds"}, 10)["value"]
            # Pipes: stdin, the runner's two channel copies, its own stdout/stderr
            # (kept while fds 1 and 2 capture the call); fds 1 and 2 and the
            # in-memory files behind them (sandbox/PROTOCOL.md). The listing's
            # own fd is gone by the time it is read.
            pipes = [l for l in links if l.startswith("pipe:")]
            memfds = sorted(l for l in links if not l.startswith("pipe:"))
            assert len(pipes) == 5 and memfds == ["/memfd:stderr (deleted)"] * 2 + ["/memfd:stdout (deleted)"] * 2, links
        finally:
            sr.close()
    finally:
        for fd in [host_fd, *padding]:
            os.close(fd)


def test_sandbox_init_has_an_empty_environment(bw):
    """bwrap (the sandbox's pid 1, readable at /proc/1/environ) inherits
    nothing, not even the launcher shell's PWD."""
    r = run(bw, "print(repr(open('/proc/1/environ', 'rb').read()))\n")
    assert r.verdict == Verdict.ok and r.stdout.strip() == "b''", r
