"""UNSAFE debug backend: a plain subprocess in a temp dir with rlimits only.

No isolation at all (student code sees the host). make_backend only builds it
with the explicit `--unsafe-no-sandbox` opt-in, and every job logs a warning.
The process supervision it uses is shared with the real backends
(process.py).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from xgrader.backends.base import RUNNER_DIR, Backend, RunningSandbox, SandboxError, SandboxJob
from xgrader.backends.channel import make_pipes
from xgrader.backends.deadlines import Deadlines
from xgrader.backends.process import (
    BASE_PATH, ProcessSandbox, arrange_fds, place_files, sandbox_site_dirs, set_rlimits,
)

if TYPE_CHECKING:
    from xgrader.config import Settings

log = structlog.get_logger(__name__)

TMP_PREFIX = "xgrader-unsafe-"


class UnsafeBackend(Backend):
    name = "unsafe"
    peer_channels = True

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings
        python = str(getattr(settings, "sandbox_python", "") or "python3")
        self.site_dirs = ":".join(sandbox_site_dirs(python))  # course packages, as on bwrap
        self.deadlines = Deadlines()

    def start(self, job: SandboxJob) -> RunningSandbox:
        log.warning("unsafe_sandbox_job", label=job.label, reason="no isolation: debug only")
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + job.label[:40] + "-"))
        work = tmp / "work"
        work.mkdir()
        try:
            place_files(work, job.files)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        env = {"PATH": BASE_PATH, "LANG": "C.UTF-8", **job.env}
        channel = child_r = child_w = None
        if job.channel:
            channel, child_r, child_w = make_pipes()
            env["XGRADER_CHANNEL"] = "fd:3,4"
        sources = [child_r, child_w] if child_r is not None else []
        if job.peer is not None:  # right after the channel's (or at 3, 4)
            env["XGRADER_PEER"] = f"fd:{3 + len(sources)},{4 + len(sources)}"
            sources += list(job.peer)
        if self.site_dirs:
            env.setdefault("SANDBOX_SITE_DIRS", self.site_dirs)

        def preexec() -> None:
            arrange_fds(sources)
            set_rlimits(job.limits)  # after: RLIMIT_NOFILE would refuse the high fds

        argv = list(job.argv)
        if argv[0] == "python3" and self.settings is not None:
            argv[0] = getattr(self.settings, "sandbox_python", "python3")
        # No mount namespace here: the runner is used where it lies in the repository.
        runner_dir = str(getattr(self.settings, "runner_dir", "") or RUNNER_DIR)
        argv = [runner_dir + a[len(RUNNER_DIR):] if a == RUNNER_DIR or a.startswith(RUNNER_DIR + "/") else a
                for a in argv]
        # Debug-grade CPU accounting: children's rusage delta (racy with concurrent jobs).
        usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv, cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True, preexec_fn=preexec,
                close_fds=False,
            )
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SandboxError(f"cannot start job: {exc.strerror}") from None
        finally:
            for fd in (child_r, child_w):
                if fd is not None:
                    os.close(fd)

        def done() -> dict[str, Any]:
            shutil.rmtree(tmp, ignore_errors=True)
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            return {"cpu_s": (usage.ru_utime + usage.ru_stime) - (usage0.ru_utime + usage0.ru_stime)}

        sandbox = ProcessSandbox(proc, job, started, channel, on_done=done)
        sandbox.arm(self.deadlines)
        return sandbox

    def check(self) -> None:
        if not os.access(tempfile.gettempdir(), os.W_OK):
            raise SandboxError("temp dir not writable")

    def cleanup_stale(self) -> None:
        for path in Path(tempfile.gettempdir()).glob(TMP_PREFIX + "*"):
            shutil.rmtree(path, ignore_errors=True)
