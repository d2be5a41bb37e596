"""Docker backend specifics on the real podman engine (marker `docker`): the
container's hardening, limits -> verdicts, the channel, removal of everything
a job started, stale cleanup, and a hung engine API. The generic contract is
in test_sandbox_backends.py and tests/attacks/ (the `backend` fixture)."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.support.sandbox import docker_settings
from xgrader.config import Settings
from xgrader.backends import make_backend
from xgrader.backends.base import ChannelError, Limits, SandboxError, SandboxJob, Verdict
from xgrader.backends.docker_backend import CGROUP_PREFIX, LABEL, OWNER, TMP_PREFIX, DockerBackend

pytestmark = pytest.mark.docker

PY = ["python3", "-I", "-S", "x.py"]


def job(src: str, **kw) -> SandboxJob:
    return SandboxJob(argv=PY, files={"x.py": src.encode()}, **kw)


@pytest.fixture(scope="module")
def docker(podman_engine):
    b = DockerBackend(docker_settings(podman_engine))
    b.check()
    yield b
    b.close()


def leftovers(b: DockerBackend, label: str) -> dict[str, list]:
    """Containers, host folders and cgroups a job labelled `label` could leave."""
    containers = b.api.containers(all=True, filters={"label": f"{LABEL}={label}"})
    safe = label.replace("-", "_")
    folders = list(Path("/tmp").glob(f"{TMP_PREFIX}{os.getpid()}-{label}-*"))
    cgroups = [p for p in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PREFIX}{os.getpid()}-{safe}-*") if live_procs(p)]
    return {"containers": containers, "folders": folders, "cgroups": cgroups}


def live_procs(cgroup: Path) -> list[int]:
    """Processes in a cgroup tree that are not zombies. podman's conmon exits
    as a zombie of pid 1; an init that reaps lazily (like this VM's) leaves it
    in the job's cgroup for a while: the backend then removes the cgroup later."""
    live = []
    try:
        files = list(cgroup.rglob("cgroup.procs"))
    except OSError:  # removed while we look
        return []
    for procs in files:
        try:
            pids = procs.read_text().split()
        except OSError:  # removed while we look (ENOENT, ENODEV)
            continue
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_bytes()
            except OSError:
                continue
            if stat[stat.rfind(b")") + 2:][:1] != b"Z":
                live.append(int(pid))
    return live


def assert_clean(b: DockerBackend, label: str) -> None:
    # podman's conmon (and the cleanup it runs) may linger in its sub-cgroup for a
    # few seconds on a loaded host; the backend removes the cgroup once it is empty.
    deadline = time.monotonic() + 20
    while True:
        left = leftovers(b, label)
        if not any(left.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not any(left.values()), left


def test_hardening_inside_the_container(docker):
    src = r"""
import os, socket
print("uid", os.getuid(), os.getgid())
st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
print("caps", st["CapEff"].strip(), st["CapBnd"].strip(), "nnp", st["NoNewPrivs"].strip())
print("ifaces", sorted(n for _, n in socket.if_nameindex()))
for p in ["/etc/x", "/opt/xgrader/x", "/run/xgrader/x", "/usr/x", "/x", "/tmp/work/x.py"]:
    try:
        open(p, "a").close(); print("wrote", p)
    except OSError as e:
        print("ro", p, e.errno)
open("/tmp/t.sh", "w").write("#!/bin/sh\necho ran\n"); os.chmod("/tmp/t.sh", 0o755)
try:
    os.execv("/tmp/t.sh", ["/tmp/t.sh"])
except OSError as e:
    print("noexec", e.errno)
"""
    r = docker.run(job(src))
    assert r.verdict == Verdict.ok, r
    out = r.stdout
    assert "uid 65534 65534" in out
    assert "caps 0000000000000000 0000000000000000 nnp 1" in out
    assert "ifaces ['lo']" in out
    # Only the job's own folder on the tmpfs is writable.
    assert [line.split()[1] for line in out.splitlines() if line.startswith("wrote")] == ["/tmp/work/x.py"], out
    assert "noexec 13" in out


def test_environment_is_only_what_the_job_sets(docker, monkeypatch):
    monkeypatch.setenv("XGRADER_QUEUE_PASSWORD", "CANARY-docker-env-77")
    r = docker.run(job("import os; print(sorted(os.environ.items()))", env={"MY": "v"}))
    assert "CANARY" not in r.stdout and "('MY', 'v')" in r.stdout and "XGRADER" not in r.stdout, r


@pytest.mark.parametrize("src,limits,verdict", [
    ("x = []\nwhile True: x.append(b'x' * 10_000_000)", Limits(memory_mb=64, wall_s=20), Verdict.memory),
    ("while True: pass", Limits(cpu_s=1, wall_s=20), Verdict.cpu_time),
    ("import time; time.sleep(60)", Limits(wall_s=1.5), Verdict.wall_time),
    ("import sys\nwhile True: sys.stderr.write('e' * 4096)", Limits(output_bytes=20_000), Verdict.output),
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", Limits(), Verdict.killed),
], ids=["memory", "cpu", "wall", "output", "signal"])
def test_limits_give_verdicts_and_leave_nothing(docker, src, limits, verdict):
    label = f"lim-{verdict.value}"
    t0 = time.monotonic()
    r = docker.run(job(src, limits=limits, label=label))
    assert r.verdict == verdict, r
    assert time.monotonic() - t0 < limits.wall_s + 10
    if verdict == Verdict.memory:
        assert r.peak_memory_mb is not None and r.peak_memory_mb >= 0.9 * 64
    if verdict == Verdict.cpu_time:
        assert r.cpu_s is not None and r.cpu_s >= 0.9
    if verdict == Verdict.output:
        assert r.stderr_truncated and len(r.stderr) <= 20_000
    if verdict == Verdict.killed:
        assert r.signal == 11
    assert_clean(docker, label)


def test_file_size_tmp_size_and_pids(docker):
    src = r"""
import os, threading, time
try:
    with open("/tmp/work/big", "wb") as f:
        f.write(b"x" * (3 * 1024 * 1024))
    print("fsize not enforced")
except OSError as e:
    print("fsize", e.errno)
os.remove("/tmp/work/big")
n = 0
try:
    for i in range(20):
        with open(f"/tmp/work/f{i}", "wb") as f:
            f.write(b"y" * (1024 * 1024)); n += 1
except OSError as e:
    print("tmp full", e.errno, n)
threads = 0
try:
    while True:
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); threads += 1
except RuntimeError:
    print("pids", threads)
"""
    r = docker.run(job(src, limits=Limits(file_mb=2, tmp_mb=8, pids=24, wall_s=20)))
    assert "fsize 27" in r.stdout, r  # EFBIG (SIGXFSZ is ignored by Python)
    full = [line for line in r.stdout.splitlines() if line.startswith("tmp full")]
    assert full and full[0].split()[2] == "28" and int(full[0].split()[3]) <= 8, r  # ENOSPC at 8 MiB
    pids = [line for line in r.stdout.splitlines() if line.startswith("pids")]
    assert pids and int(pids[0].split()[1]) < 24, r


def test_channel_is_the_socket_not_stdout(docker):
    """The runner's replies come on the channel; printing JSON forges nothing,
    and student code cannot open a second connection to the channel."""
    sub = (b"import json, socket\n"
           b"print(json.dumps({'id': 1, 'ok': True, 'names': {'forged': 'function'}}))\n"
           b"s = socket.socket(socket.AF_UNIX)\n"
           b"try:\n    s.connect('/run/xgrader/channel.sock'); print('CONNECTED')\n"
           b"except OSError as e:\n    print('refused', e.errno)\n"
           b"def f():\n    return 7\n")
    j = SandboxJob(argv=docker.python_argv(), files={"sub.py": sub}, channel=True, label="chan")
    with docker.start(j) as sb:
        sb.channel.send({"op": "load", "module": "sub", "path": "sub.py", "id": 1})
        reply = sb.channel.recv(20)
        assert reply["ok"] and "forged" not in reply["names"] and "f" in reply["names"], reply
        assert "refused" in reply["stdout"] and "CONNECTED" not in reply["stdout"], reply
        sb.channel.send({"op": "call", "target": "f", "args": [], "kwargs": {}, "id": 2})
        assert sb.channel.recv(20)["value"] == 7
        sb.channel.send({"op": "exit", "id": 3})
        sb.channel.recv(20)
        r = sb.wait()
    assert r.verdict == Verdict.ok and r.exit_code == 0, r
    assert_clean(docker, "chan")


def test_runner_that_dies_before_connecting_is_a_channel_error(docker):
    from xgrader.backends.base import ChannelError
    j = SandboxJob(argv=["python3", "-c", "raise SystemExit(4)"], channel=True, label="noconn")
    t0 = time.monotonic()
    with docker.start(j) as sb:
        with pytest.raises(ChannelError):
            sb.channel.send({"op": "load", "id": 1})
        assert sb.wait().exit_code == 4
    assert time.monotonic() - t0 < 8
    assert_clean(docker, "noconn")


def test_kill_label_removes_a_running_job(docker):
    sb = docker.start(job("import time; time.sleep(60)", label="victim", limits=Limits(wall_s=30)))
    try:
        time.sleep(0.5)
        docker.kill_label("victim")
        t0 = time.monotonic()
        r = sb.wait()
        assert time.monotonic() - t0 < 5 and r.verdict != Verdict.ok, r
    finally:
        sb.kill()
    assert_clean(docker, "victim")


def test_cleanup_stale_removes_a_dead_owners_containers_only(docker):
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    ids = {}
    for who, pid in (("dead", dead.pid), ("live", os.getpid())):
        c = docker.api.create_container(docker.image, command=["sleep", "60"],
                                        labels={LABEL: f"stale-{who}", OWNER: f"{host}:{pid}"})
        docker.api.start(c["Id"])
        ids[who] = c["Id"]
    folder = Path(f"/tmp/{TMP_PREFIX}{dead.pid}-stale-x")
    folder.mkdir()
    try:
        docker.cleanup_stale()
        alive = {c["Id"] for c in docker.api.containers(all=True, filters={"label": OWNER})}
        assert ids["dead"] not in alive and ids["live"] in alive
        assert not folder.exists()
    finally:
        docker.kill_label("stale-live")
        docker.kill_label("stale-dead")
        if folder.exists():
            folder.rmdir()


class HungEngine:
    """A Unix socket that accepts connections and never answers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                continue

    def close(self) -> None:
        self.stop.set()
        for c in [self.sock, *self.conns]:
            c.close()


def test_hung_engine_is_a_sandbox_error_within_the_timeout(tmp_path):
    hung = HungEngine(tmp_path / "hung.sock")
    try:
        settings = Settings(sandbox="docker", docker_url=f"unix://{hung.path}", docker_api_timeout_s=1.0)
        b = DockerBackend(settings)
        t0 = time.monotonic()
        with pytest.raises(SandboxError):
            b.check()
        assert time.monotonic() - t0 < 4
        t0 = time.monotonic()
        with pytest.raises(SandboxError):
            b.run(job("print(1)", limits=Limits(wall_s=2)))
        assert time.monotonic() - t0 < 6
        assert not list(Path("/tmp").glob(f"{TMP_PREFIX}{os.getpid()}-job-*"))
        # auto: the engine does not answer -> bwrap, without hanging.
        t0 = time.monotonic()
        assert make_backend(settings.model_copy(update={"sandbox": "auto"})).name == "bwrap"
        assert time.monotonic() - t0 < 4
        with pytest.raises(SandboxError):
            make_backend(settings)
    finally:
        hung.close()


def test_missing_engine_or_image(podman_engine):
    with pytest.raises(SandboxError, match="not found"):
        DockerBackend(docker_settings(podman_engine, docker_image="xgrader-no-such-image:1")).check()
    nowhere = Settings(sandbox="auto", docker_url="unix:///nonexistent/docker.sock")
    assert make_backend(nowhere).name == "bwrap"


def test_kill_during_wait_is_killed_not_ok(docker):
    sb = docker.start(job("import time; time.sleep(60)", label="killwait", limits=Limits(wall_s=30)))
    threading.Timer(1.0, sb.kill).start()
    t0 = time.monotonic()
    r = sb.wait()
    assert r.verdict == Verdict.killed and time.monotonic() - t0 < 8, r
    assert_clean(docker, "killwait")


def test_warm_pool_serves_a_job_with_its_own_limits(podman_engine):
    """Pre-started containers (XGRADER_WARM_POOL): a job takes one, gets its
    files through the runner, the job's memory limit (not the template's)
    applies, and every container is used once."""
    from xgrader.backends.warm import WarmPool
    pool = make_backend(docker_settings(podman_engine, warm_pool=1))
    try:
        assert isinstance(pool, WarmPool) and pool.name == "docker"
        assert pool.wait_ready(1, timeout=30)
        sub = b"def f(x):\n    return x + 1\n"
        j = SandboxJob(argv=pool.python_argv(), files={"sub.py": sub}, channel=True, label="warm-ok")
        t0 = time.monotonic()
        with pool.start(j) as sb:
            sb.channel.send({"op": "load", "module": "sub", "path": "sub.py", "id": 1})
            assert sb.channel.recv(20)["ok"]
            sb.channel.send({"op": "call", "target": "f", "args": [41], "kwargs": {}, "id": 2})
            assert sb.channel.recv(20)["value"] == 42
            first = sb.cid
        assert pool.hits == 1, (pool.hits, pool.misses)
        warm_ms = (time.monotonic() - t0) * 1000
        assert pool.wait_ready(1, timeout=30)
        bomb = b"x = []\nwhile True:\n    x.append(b'x' * 10_000_000)\n"
        j = SandboxJob(argv=pool.python_argv(), files={"sub.py": bomb}, channel=True, label="warm-oom",
                       limits=pool.template.limits.model_copy(update={"memory_mb": 48}))
        with pool.start(j) as sb:
            assert sb.cid != first  # never reused
            sb.channel.send({"op": "load", "module": "sub", "path": "sub.py", "id": 1})
            with pytest.raises((ChannelError, TimeoutError)):
                sb.channel.recv(20)
            r = sb.wait()
        assert pool.hits == 2 and r.verdict == Verdict.memory and r.peak_memory_mb < 48 * 1.2, r
        print(f"warm interactive job {warm_ms:.0f} ms")
    finally:
        pool.close()
    assert_clean(pool.inner, "warm")


def test_forked_child_uses_its_own_engine_connection(docker):
    """The daemon forks a child per job: parent and child both run jobs on the
    same backend object without sharing a keep-alive HTTP connection, and the
    child's containers carry the child's pid as owner (for cleanup_stale)."""
    assert docker.run(job("print(1)")).stdout == "1\n"  # the parent's pool holds a connection now
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        code = 3
        try:
            sb = docker.start(job("import time; time.sleep(0.5); print('child')", label="forked"))
            owner = docker.api.inspect_container(sb.cid)["Config"]["Labels"][OWNER]
            r = sb.wait()
            code = 0 if r.stdout == "child\n" and owner.endswith(f":{os.getpid()}") else 1
        finally:
            os._exit(code)
    results = [docker.run(job(f"print({i})")).stdout for i in range(3)]
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert results == ["0\n", "1\n", "2\n"]
    assert_clean(docker, "forked")
    # The child is gone: the parent's periodic check() removes what it left on the host.
    docker.check()
    assert not list(Path("/tmp").glob(f"{TMP_PREFIX}{pid}-*"))
    left = list(Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PREFIX}{pid}-*"))
    assert not [p for p in left if live_procs(p)], left


def test_planted_seccomp_profile_is_not_used(tmp_path, monkeypatch):
    """podman gets the profile as a file in TMPDIR: one planted there (weaker
    content, or not ours) is replaced, never loaded."""
    import json

    from xgrader.backends.docker_backend import _profile_file
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    profile = json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []})
    first = _profile_file(profile)
    assert first.read_text() == profile and first.parent == tmp_path
    first.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW"}))  # tampered
    again = _profile_file(profile)
    assert again.read_text() == profile
    os.chmod(again, 0o666)  # writable by others: not trusted either
    assert _profile_file(profile).read_text() == profile and not _profile_file(profile).stat().st_mode & 0o022


class StallingProxy:
    """A Unix-socket proxy to the real engine that can stop passing requests
    on (responses and the attach stream still flow): an engine that hangs in
    the middle of a job."""

    def __init__(self, path: Path, upstream: str) -> None:
        self.path, self.upstream = path, upstream
        self.stall = threading.Event()
        self.stop = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client = self.sock.accept()[0]
            except OSError:
                continue
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.upstream)
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while not self.stop.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if requests and self.stall.is_set():
                    continue  # swallowed: the engine never hears of it
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_engine_hanging_mid_job_is_a_sandbox_error_in_bounded_time(docker, podman_engine, tmp_path):
    proxy = StallingProxy(tmp_path / "engine.sock", podman_engine.removeprefix("unix://"))
    try:
        b = DockerBackend(docker_settings(f"unix://{proxy.path}", docker_api_timeout_s=1.0))
        sb = b.start(job("print('out')", label="stalled"))
        proxy.stall.set()  # create/attach/start went through; inspect and remove will not
        t0 = time.monotonic()
        r = sb.wait()
        assert time.monotonic() - t0 < 6, r
        assert r.verdict == Verdict.sandbox_error and "container engine" in (r.error or ""), r
    finally:
        proxy.close()
    docker.kill_label("stalled")  # the engine is back: the leftover goes
    assert_clean(docker, "stalled")


def test_jobs_get_the_shipped_seccomp_profile_tightened(docker, monkeypatch):
    """The base profile ships inside the package (no fallback to whatever
    the engine would apply): the container's profile is it plus the
    deny-list, whatever the host has installed."""
    import json
    from importlib.resources import files

    from xgrader.backends import docker_backend
    from xgrader.backends.docker_backend import base_seccomp, seccomp_profile

    assert files("xgrader.backends").joinpath("seccomp-docker.json").is_file()
    base = base_seccomp()
    assert base["defaultAction"] == "SCMP_ACT_ERRNO" and len(base["syscalls"]) > 10
    fresh = DockerBackend(docker_settings(docker.url))
    warnings = []
    monkeypatch.setattr(docker_backend.log, "warning", lambda event, **kw: warnings.append(event))
    fresh._engine()
    fresh.close()
    opts = [o for o in fresh._security_opt if o.startswith("seccomp=")]
    assert len(opts) == 1 and warnings == [], (fresh._security_opt, warnings)
    profile = json.loads(Path(opts[0].split("=", 1)[1]).read_text())  # podman takes a file
    assert profile == seccomp_profile(base)
    assert {"names": sorted(set(docker_backend.DENIED)), "action": "SCMP_ACT_ERRNO", "errnoRet": 1} in profile["syscalls"]
    # In a container: the filter is on, and a call the deny-list adds fails with EPERM.
    import platform

    from xgrader.backends.seccomp import ARCHES
    keyctl = ARCHES[platform.machine()][1]["keyctl"]
    r = docker.run(job("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                       "print(open('/proc/self/status').read().split('Seccomp:')[1].split()[0])\n"
                       f"print(libc.syscall({keyctl}, 0, 0, 0, 0, 0), ctypes.get_errno())\n"))
    assert r.stdout.split() == ["2", "-1", "1"], r
