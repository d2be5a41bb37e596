"""deploy/systemd/xgrader.service as an operator installs it: the install
comment's commands run (paths under a scratch root, the wheel built from this
checkout, the system user `xgrader` created), then the unit's ExecStart runs
as written under what the unit declares - User/Group, Environment and
EnvironmentFile, WorkingDirectory with StateDirectory/CacheDirectory and
their variables, UMask, NoNewPrivileges, an empty capability bounding set,
PrivateTmp, ProtectSystem=strict and ProtectHome - against the bundled queue
server on loopback, and grades submissions with bwrap.

This machine has no systemd as pid 1: the unit's settings are applied by
unshare (a mount namespace: private /tmp and /var/tmp, a read-only root with
the state and cache directories writable, no /home, /root or /run/user) and
setpriv. Settings outside that list (Delegate, the kernel protections,
RestrictAddressFamilies, ...) are not emulated; `systemd-analyze verify`
checks them in tests/test_deploy.py."""

from __future__ import annotations

import configparser
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from xgrader.daemon.demo_harness import CallbackReceiver, Sample, free_port, login, submit, wait_http

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "deploy" / "systemd" / "xgrader.service"
# Paths of the install comment and the unit, moved under the scratch root.
SYSTEM_PATHS = ("/opt/xgrader", "/usr/local/bin/xgrader", "/etc/xgrader", "/srv/xgrader", "/etc/systemd/system",
                "/var/lib/xgrader", "/var/cache/xgrader")
HANDLED = {"User", "Group", "Environment", "EnvironmentFile", "WorkingDirectory", "ExecStart", "UMask",
           "NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities", "StateDirectory", "CacheDirectory",
           "PrivateTmp", "ProtectSystem", "ProtectHome", "KillSignal", "TimeoutStopSec"}


def unit_service() -> dict[str, list[str]]:
    """[Service] as name -> values (repeated keys kept in order)."""
    out: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def install_commands() -> list[str]:
    """The comment's shell lines, heredocs joined back into their command."""
    lines = UNIT.read_text().split("[Unit]")[0].splitlines()
    body = [line[4:] for line in lines if line.startswith("#   ")]
    commands, heredoc = [], None
    for line in body:
        if heredoc is not None:
            commands[-1] += "\n" + line
            if line == heredoc:
                heredoc = None
            continue
        commands.append(line.split("   #")[0].rstrip())
        m = re.search(r"<<'?(\w+)'?", line)
        if m:
            heredoc = m.group(1)
    return commands


def moved(text: str, root: Path) -> str:
    """Every system path of the unit and its comment, under root (one pass)."""
    pattern = "|".join(re.escape(p) for p in sorted(SYSTEM_PATHS, key=len, reverse=True))
    return re.sub(rf"(?<![\w/.-])({pattern})(?![\w.-])", lambda m: f"{root}{m.group(1)}", text)


@pytest.fixture(scope="module")
def wheel():
    work = Path(tempfile.mkdtemp(prefix="xgrader-unit-wheel-"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                        "-w", str(work), str(REPO)], capture_output=True, text=True, timeout=600)
    shutil.rmtree(REPO / "build", ignore_errors=True)   # setuptools' staging folder
    assert r.returncode == 0, r.stderr
    (path,) = work.glob("xgrader-*.whl")
    yield path
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def xgrader_user():
    """The unit's User=, created by the comment's useradd; removed after if this test made it."""
    made = False
    try:
        pwd.getpwnam("xgrader")
    except KeyError:
        made = True
    yield made
    if made:
        subprocess.run(["userdel", "xgrader"], capture_output=True, timeout=60)


def service_env(service: dict[str, list[str]], root: Path) -> dict[str, str]:
    """What systemd gives the process: its base variables, Environment=,
    EnvironmentFile= (later wins), the directories' variables."""
    user = pwd.getpwnam(service["User"][0])
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "USER": user.pw_name, "LOGNAME": user.pw_name, "HOME": moved(user.pw_dir, root), "SHELL": user.pw_shell,
           "STATE_DIRECTORY": f"{root}/var/lib/{service['StateDirectory'][0]}",
           "CACHE_DIRECTORY": f"{root}/var/cache/{service['CacheDirectory'][0]}"}
    for item in service.get("Environment", []):
        for word in shlex.split(item):
            key, _, value = word.partition("=")
            env[key] = value
    for item in service.get("EnvironmentFile", []):
        path = Path(moved(item.lstrip("-"), root))
        if not path.exists() and item.startswith("-"):
            continue
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                env[key.strip()] = value.strip().strip('"')
    return env


def test_the_unit_runs_as_installed_and_grades(wheel, xgrader_user):
    service = unit_service()
    assert set(service) - HANDLED <= {
        "Type", "Restart", "RestartSec", "KillMode", "Delegate", "ProtectControlGroups", "TasksMax", "LimitCORE",
        "PrivateDevices", "PrivateIPC", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
        "ProtectClock", "ProtectHostname", "RestrictSUIDSGID", "RestrictRealtime", "RemoveIPC", "LockPersonality",
        "SystemCallArchitectures", "RestrictAddressFamilies"}, "a new unit setting: emulate it here or list it"
    assert service["ProtectSystem"] == ["strict"] and service["ProtectHome"] == ["yes"]
    assert service["PrivateTmp"] == ["yes"] and service["NoNewPrivileges"] == ["yes"]
    assert service["CapabilityBoundingSet"] == [""]
    for pkg in re.search(r"apt-get install ([^#\n]+)", UNIT.read_text()).group(1).split():
        assert subprocess.run(["dpkg", "-s", pkg], capture_output=True).returncode == 0, f"{pkg} (setup installs it)"

    # Not under /tmp or /var/tmp: PrivateTmp hides them from the service.
    root = Path(tempfile.mkdtemp(prefix="xgunit-", dir="/var/lib"))
    root.chmod(0o755)
    receiver = queue = daemon = None
    try:
        for path in SYSTEM_PATHS:
            Path(f"{root}{path}").parent.mkdir(parents=True, exist_ok=True)
        Path(f"{root}/etc/systemd/system").mkdir(parents=True)   # there on any systemd host
        password = os.urandom(12).hex()
        script = ["set -euo pipefail", f"cd {shlex.quote(str(REPO))}"]
        for command in install_commands():
            if command.startswith(("apt-get ", "systemctl ")):
                continue      # packages checked above; the unit is started below
            if command.startswith("useradd ") and not xgrader_user:
                continue      # left by an earlier run
            command = moved(command, root).replace("xgrader-*.whl", str(wheel))
            # The comment's venv comes from Debian's python3 (python3-venv), as on a server.
            command = command.replace("python3 -m venv", "/usr/bin/python3 -m venv")
            script.append(command)
        clean = {k: v for k, v in os.environ.items()   # nothing pointing at this checkout
                 if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("XGRADER_")}
        r = subprocess.run(["bash", "-c", "\n".join(script)], env={**clean, "PASSWORD": password},
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert Path(f"{root}/etc/systemd/system/xgrader.service").read_text() == UNIT.read_text()
        user = pwd.getpwnam("xgrader")
        assert user.pw_shell == "/usr/sbin/nologin" and user.pw_uid < 1000   # --system

        # The operator's values in /etc/xgrader/env, assignments in /srv/xgrader/handlers.
        port = free_port()
        queue_url = f"http://127.0.0.1:{port}/xqueue/"
        env_file = Path(f"{root}/etc/xgrader/env")
        text = env_file.read_text()
        text = re.sub(r"(?m)^XGRADER_QUEUE_URL=.*$", f"XGRADER_QUEUE_URL={queue_url}", text)
        text = re.sub(r"(?m)^XGRADER_QUEUE_NAMES=.*$", "XGRADER_QUEUE_NAMES=course", text)
        env_file.write_text(moved(text, root) + "XGRADER_POLL_MAX_S=0.5\n")
        shutil.copytree(REPO / "payload_handlers", f"{root}/srv/xgrader/handlers", dirs_exist_ok=True)
        pw_file = Path(f"{root}/etc/xgrader/queue_password")
        assert pw_file.read_text() == password and pw_file.stat().st_uid == user.pw_uid
        assert oct(pw_file.stat().st_mode & 0o777) == "0o400"

        # systemd makes StateDirectory/CacheDirectory, owned by User=.
        for kind in ("lib", "cache"):
            folder = Path(f"{root}/var/{kind}/xgrader")
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, user.pw_uid, user.pw_gid)
            folder.chmod(0o755)

        (root / "queue_pw").write_text(password)
        queue = subprocess.Popen([sys.executable, "-m", "xgrader", "queue", "serve", "--port", str(port),
                                  "--db", str(root / "queue.db"), "--queue", "course",
                                  "--user-file", f"xgrader:{root / 'queue_pw'}", "--user-file", f"lms:{root / 'queue_pw'}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        wait_http(queue_url + "status/", 30, queue)

        env = service_env(service, root)
        exec_start = shlex.split(moved(service["ExecStart"][0], root))
        workdir = moved(service["WorkingDirectory"][0], root)
        writable = [env["STATE_DIRECTORY"], env["CACHE_DIRECTORY"]]
        # PrivateTmp, ProtectSystem=strict (state and cache writable), ProtectHome, then the
        # user, no new privileges, no capability, the umask, and exec.
        mounts = " && ".join([
            "mount --make-rprivate /",
            "mount -t tmpfs -o mode=1777 tmpfs /tmp", "mount -t tmpfs -o mode=1777 tmpfs /var/tmp",
            *[f"mount --bind {shlex.quote(w)} {shlex.quote(w)}" for w in writable],
            "mount -o remount,bind,ro /",
            *[f"mount -o remount,bind,rw {shlex.quote(w)}" for w in writable],
            *[f"{{ [ ! -d {p} ] || mount -t tmpfs -o ro,mode=000 tmpfs {p}; }}" for p in ("/home", "/root", "/run/user")],
            f"cd {shlex.quote(workdir)}", f"umask {service['UMask'][0]}",
            shlex.join(["exec", "setpriv", "--reuid", service["User"][0], "--regid", service["Group"][0],
                        "--init-groups", "--no-new-privs", "--bounding-set", "-all", "--inh-caps", "-all",
                        "--", *exec_start]),
        ])
        log = open(root / "daemon.log", "w")
        daemon = subprocess.Popen(["unshare", "--mount", "--", "sh", "-c", mounts], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        receiver = CallbackReceiver()
        session = requests.Session()
        login(session, queue_url, "lms", password)
        handlers = REPO / "payload_handlers"
        picks = [("is_prime", "correct.py"), ("is_prime", "wrong_offbyone.py"), ("sum_digits", "wrong_infinite_loop.py")]
        samples = [Sample(key=f"{a}--{f}", assignment=a, name=f,
                          student_response=(handlers / a / "samples" / f).read_text()) for a, f in picks]
        for sample in samples:
            submit(session, queue_url, sample, receiver.url, queue="course")
        end = time.monotonic() + 240
        while receiver.count() < len(samples) and time.monotonic() < end and daemon.poll() is None:
            time.sleep(0.5)
        logs = (root / "daemon.log").read_text()
        assert receiver.count() == len(samples), f"exit {daemon.poll()}:\n{logs[-5000:]}"
        wrong = {s.key: receiver.results[s.key][0] for s in samples
                 if receiver.results[s.key][0]["correct"] is not s.name.startswith("correct")}
        assert not wrong, f"{wrong}\n{logs[-4000:]}"

        # It ran as the unit's user, with no capability, no new privileges, the unit's umask.
        # unshare, sh and setpriv exec in turn: the process started is the daemon.
        assert "xgrader" in Path(f"/proc/{daemon.pid}/cmdline").read_text()
        status = Path(f"/proc/{daemon.pid}/status").read_text()
        assert re.search(rf"(?m)^Uid:\s+{user.pw_uid}\s", status) and re.search(r"(?m)^CapBnd:\s+0+$", status)
        assert re.search(r"(?m)^NoNewPrivs:\s+1$", status) and re.search(r"(?m)^Umask:\s+0077$", status)

        # KillSignal=SIGTERM: drained and stopped within TimeoutStopSec.
        os.killpg(daemon.pid, getattr(signal, service["KillSignal"][0]))
        code = daemon.wait(int(service["TimeoutStopSec"][0].rstrip("s")))
        logs = (root / "daemon.log").read_text()
        assert code == 0, logs[-3000:]
        events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        assert any(e.get("event") == "daemon_started" and e.get("backend") == "bwrap" for e in events), logs[-3000:]
        assert not [e for e in events if e.get("level") in ("error", "critical")], logs[-3000:]
    finally:
        if daemon is not None and daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(10)
        if queue is not None:
            queue.terminate()
            queue.wait(10)
        if receiver is not None:
            receiver.stop()
        shutil.rmtree(root, ignore_errors=True)
