"""An unprivileged course author, for the tests that run xgrader without root.

`author` (session): the user scripts/setup-author.sh creates (xgrader-author,
with subordinate ids and a venv of xgrader's dependencies built from Debian's
python3), and a copy of the code the user can read (the checkout may not be
readable by others). Commands run as that user through setpriv with an
environment of the user's own, never the test process's.

`author_podman` (session): the user's rootless podman, its Docker-compatible
API socket at $XDG_RUNTIME_DIR/podman/podman.sock (started if it does not
answer), with the grading image copied from root's engine when it differs.
It FAILS, never skips, when podman cannot run rootless here.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.sandbox import REPO

if TYPE_CHECKING:
    from tests.support.user_backend import UserBackend

AUTHOR = os.environ.get("XGRADER_AUTHOR", "xgrader-author")
VENV = Path(os.environ.get("XGRADER_AUTHOR_VENV", "/var/tmp/xgrader-author-venv"))
IMAGE = "xgrader-grader:latest"
AUTHOR_IMAGE = "xgrader-grader:author-tests"  # in root's engine, built from this checkout


class Author:
    def __init__(self, code: Path) -> None:
        pw = pwd.getpwnam(AUTHOR)
        self.name, self.uid, self.gid, self.home = AUTHOR, pw.pw_uid, pw.pw_gid, pw.pw_dir
        self.python = str(VENV / "bin" / "python")
        self.code = code
        self.runtime = f"/run/user/{self.uid}"
        self.tmp = Path(tempfile.mkdtemp(prefix="xgrader-author-tmp-"))
        os.chown(self.tmp, self.uid, self.gid)

    def env(self, **extra: str) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name, "LANG": "C.UTF-8",
                "PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(self.code),
                "XDG_RUNTIME_DIR": self.runtime, "TMPDIR": str(self.tmp), **extra}

    def command(self, *argv: str, **env: str) -> list[str]:
        """argv run as the author (no capabilities: setpriv drops them with
        the uid), with exactly the author's environment."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--",
                "env", "-i", *(f"{k}={v}" for k, v in self.env(**env).items()), *argv]

    def xgrader(self, *args: str, timeout: float = 300, preexec_fn=None, **env: str) -> subprocess.CompletedProcess:
        """`python -m xgrader ARGS` as the author, from the author's folder."""
        return subprocess.run(self.command(self.python, "-m", "xgrader", *args, **env), capture_output=True,
                              text=True, timeout=timeout, cwd=self.tmp, preexec_fn=preexec_fn)

    def python_code(self, code: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(self.python, "-c", code, **env), capture_output=True, text=True,
                              timeout=timeout, cwd=self.tmp)

    def processes(self) -> dict[int, str]:
        """The author's live processes on this host: pid -> name."""
        out = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.stat(f"/proc/{entry}").st_uid != self.uid:
                    continue
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            if stat[stat.rfind(b")") + 2:][:1] != b"Z":
                out[int(entry)] = stat[stat.find(b"(") + 1:stat.rfind(b")")].decode(errors="replace")
        return out

    def engine_pids(self) -> set[int]:
        """The author's rootless podman: its API service and the pause
        process holding its user namespace (no job's)."""
        from xgrader.daemon.proctree import descendants
        pids: set[int] = set()
        for pid in self.processes():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd[:3] == [b"podman", b"system", b"service"] or cmd[:2] == [b"catatonit", b"-P"]:
                pids |= {pid, *descendants(pid)}
        return pids

    def new_processes(self, before: dict[int, str], settle: float = 5.0) -> dict[int, str]:
        """The author's processes that were not there `before`, once what a
        command left has had `settle` seconds to go."""
        deadline = time.monotonic() + settle
        while True:
            engine = self.engine_pids()
            left = {p: n for p, n in self.processes().items() if p not in before and p not in engine}
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)


def _copy_code(dest: Path) -> None:
    for name in ("xgrader", "sandbox", "payload_handlers", "tests"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for root, dirs, files in os.walk(dest):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


@pytest.fixture(scope="session")
def author() -> Author:
    """The unprivileged author and a readable copy of the code (made once)."""
    try:
        pwd.getpwnam(AUTHOR)
        ready = (VENV / "bin" / "python").exists()
    except KeyError:
        ready = False
    if not ready:
        r = subprocess.run(["bash", str(REPO / "scripts/setup-author.sh")], capture_output=True, text=True,
                           timeout=900)
        if r.returncode != 0:
            pytest.fail(f"scripts/setup-author.sh failed: {r.stderr[-2000:]}")
    code = Path(tempfile.mkdtemp(prefix="xgrader-author-code-"))
    os.chmod(code, 0o755)
    _copy_code(code)
    a = Author(code)
    yield a
    shutil.rmtree(code, ignore_errors=True)
    shutil.rmtree(a.tmp, ignore_errors=True)


def _answers(url: str) -> bool:
    from tests.support.sandbox import _engine_answers
    return _engine_answers(url)


@pytest.fixture(scope="session")
def author_podman(author: Author, podman_engine: str) -> str:
    """The URL of the author's rootless podman API socket, with the grading image."""
    sock = f"{author.runtime}/podman/podman.sock"
    url = f"unix://{sock}"
    if not _answers(url):
        os.makedirs(author.runtime, exist_ok=True)
        os.chown(author.runtime, author.uid, author.gid)
        # Its own TMPDIR (image loads write there): the service outlives this
        # session, whose author.tmp goes at its end.
        service_tmp = f"{author.runtime}/podman-tmp"
        subprocess.run(author.command("mkdir", "-p", f"{author.runtime}/podman", service_tmp), check=True)
        log = open(author.tmp / "podman-service.log", "wb")
        # Long-lived like root's socket service (scripts/setup-podman.sh); in a
        # session of its own, from the runtime folder (conmon writes there).
        subprocess.Popen(author.command("podman", "system", "service", "--time=0", url, TMPDIR=service_tmp),
                         stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, cwd=author.runtime, start_new_session=True)
        deadline = time.monotonic() + 30
        while not _answers(url) and time.monotonic() < deadline:
            time.sleep(0.2)
    if not _answers(url):
        pytest.fail(f"the author's rootless podman does not answer at {url}")
    # The grading image of this checkout's runner (root's engine may hold
    # another checkout's under the shared tag): built under a tag of its
    # own, copied into the author's storage as the tag the backend uses.
    from xgrader.backends.docker_backend import runner_digest
    label = "{{index .Labels \"xgrader.runner\"}}"
    theirs = subprocess.run(author.command("podman", "image", "inspect", "--format", label, IMAGE),
                            capture_output=True, text=True)
    if theirs.returncode != 0 or theirs.stdout.strip() != runner_digest(REPO / "sandbox"):
        build = subprocess.run(["bash", str(REPO / "sandbox/image/build.sh"), AUTHOR_IMAGE], capture_output=True,
                               text=True, timeout=900)
        if build.returncode != 0:
            pytest.fail(f"grading image build failed: {build.stderr[-2000:]}")
        save = subprocess.Popen(["podman", "save", AUTHOR_IMAGE], stdout=subprocess.PIPE)
        load = subprocess.run(author.command("podman", "load", "-q"), stdin=save.stdout, capture_output=True,
                              text=True, timeout=600)
        save.stdout.close()
        save.wait()
        if load.returncode != 0:
            pytest.fail(f"cannot load the grading image into the author's podman: {load.stderr[-2000:]}")
        subprocess.run(author.command("podman", "tag", AUTHOR_IMAGE, IMAGE), check=True, capture_output=True)
    return url


def user_backend(author: Author, variant: str, **settings) -> "UserBackend":
    """A backend made by make_backend in a process of the author (the daemon's
    secrets planted in its environment, as for the root backends)."""
    from tests.attacks.conftest import CANARY_ENV, CANARY_KEY
    from tests.support.user_backend import UserBackend

    cmd = author.command(author.python, "-m", "tests.support.user_backend",
                         XGRADER_QUEUE_PASSWORD=CANARY_ENV, XGRADER_HINTS__API_KEY=CANARY_KEY,
                         OPENAI_API_KEY=CANARY_KEY)
    return UserBackend(cmd, json.loads(json.dumps(settings, default=str)), variant, env=None)
