"""bubblewrap backend: every namespace unshared, no network, read-only system
binds, a size-capped tmpfs at /tmp, the job running as an unprivileged uid.

The daemon runs as root here, so the child drops to nobody (65534) *before*
exec'ing bwrap: bwrap then builds an unprivileged user namespace and sandbox
root is never host root. bwrap itself gets an empty environment because its
pid 1 would otherwise expose the daemon's secrets in /proc/1/environ.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import structlog

from xgrader.sandbox.base import (
    RUNNER_DIR, WORKDIR, Backend, RunningSandbox, SandboxError, SandboxJob,
)
from xgrader.sandbox.cgroups import CgroupManager
from xgrader.sandbox.channel import make_pipes
from xgrader.sandbox.seccomp import build_filter, filter_fd
from xgrader.sandbox.unsafe import (
    BASE_PATH, ProcessSandbox, arrange_fds, safe_relpath, set_rlimits,
)

log = structlog.get_logger(__name__)

NOBODY = 65534


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    # Debian 12 is merged-/usr: /bin, /lib* are symlinks into /usr.
    for top in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        path = Path("/") / top
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), f"/{top}"]
        elif path.is_dir():
            args += ["--ro-bind", str(path), f"/{top}"]
    return args


class BwrapBackend(Backend):
    name = "bwrap"

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"
        self.python = str(settings.sandbox_python)
        # Precomputed once: per job only the tmpfs size and file copies vary.
        prefix = [
            self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns",
            "--die-with-parent", "--new-session", "--hostname", "sandbox",
            *_system_binds(),
            "--dev", "/dev", "--proc", "/proc",
            "--ro-bind", str(Path(settings.runner_dir).resolve()), RUNNER_DIR,
        ]
        venv = getattr(settings, "sandbox_venv", None)
        if venv:
            prefix += ["--ro-bind", str(Path(venv).resolve()), "/opt/venv"]
        self._prefix = prefix
        self._seccomp = build_filter()
        self.cgroups = CgroupManager()

    def _argv(self, job: SandboxJob, file_fds: list[tuple[int, str]], seccomp_fd: int) -> list[str]:
        argv = [*self._prefix, "--seccomp", str(seccomp_fd), "--size", str(job.limits.tmp_mb * 1024 * 1024), "--tmpfs", "/tmp",
                "--dir", WORKDIR]
        for fd, dest in file_fds:
            parent = os.path.dirname(dest)
            if parent != WORKDIR:
                argv += ["--dir", parent]
            argv += ["--file", str(fd), dest]
        # bwrap's root and /dev are tmpfs owned by the sandbox user: make them read-only
        # once populated, so /tmp (size-capped) is the only writable place.
        argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", WORKDIR, "--clearenv"]
        env = {"PATH": BASE_PATH, "LANG": "C.UTF-8", **job.env}
        if job.channel:
            env["XGRADER_CHANNEL"] = "fd:3,4"
        for key, value in env.items():
            argv += ["--setenv", key, value]
        cmd = list(job.argv)
        if cmd[0] == "python3":
            cmd[0] = self.python
        return argv + ["--", *cmd]

    def start(self, job: SandboxJob) -> RunningSandbox:
        file_fds: list[tuple[int, str]] = []
        try:
            for name, data in job.files.items():
                rel = safe_relpath(name)
                fd = os.memfd_create("xgrader-file", 0)
                os.write(fd, data)
                os.lseek(fd, 0, os.SEEK_SET)
                file_fds.append((fd, f"{WORKDIR}/{rel}"))
            channel = child_r = child_w = None
            sources: list[int] = []
            if job.channel:
                channel, child_r, child_w = make_pipes()
                sources = [child_r, child_w]
            # In the child the channel is fds 3,4 and the file memfds follow.
            first = 3 + len(sources)
            argv = self._argv(job, [(first + i, dest) for i, (_, dest) in enumerate(file_fds)],
                              first + len(file_fds))
            sources += [fd for fd, _ in file_fds]
            seccomp = filter_fd(self._seccomp)
            file_fds.append((seccomp, ""))  # closed with the files below
            sources.append(seccomp)

            cg = self.cgroups.create(job.label, job.limits)

            def preexec() -> None:
                if cg is not None:
                    cg.join()
                arrange_fds(sources)
                set_rlimits(job.limits)  # after: RLIMIT_NOFILE would refuse the high fds
                # Never host root inside: drop before bwrap builds its user namespace.
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)

            started = time.monotonic()
            try:
                proc = subprocess.Popen(
                    argv, env={}, cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, start_new_session=True, preexec_fn=preexec,
                    close_fds=False, pass_fds=(),
                )
            except (OSError, subprocess.SubprocessError) as exc:
                if cg is not None:
                    cg.remove()
                raise SandboxError(f"cannot start bwrap: {exc}") from None
        finally:
            for fd, _ in file_fds:
                os.close(fd)
        for fd in (child_r, child_w):
            if fd is not None:
                os.close(fd)
        log.debug("bwrap_started", label=job.label, pid=proc.pid)

        def done() -> dict[str, Any]:
            if cg is None:
                return {}
            cg.kill()
            stats = cg.stats()
            cg.remove()
            return stats

        return ProcessSandbox(proc, job, started, channel, exit_128_is_signal=True,
                              on_kill=cg.kill if cg else None, on_done=done)

    def kill_label(self, label: str) -> None:
        for cg in self.cgroups.stale(label):
            cg.remove()

    def cleanup_stale(self) -> None:
        for cg in self.cgroups.stale():
            cg.remove()

    def check(self) -> None:
        if not os.access(self.bwrap, os.X_OK):
            raise SandboxError("bwrap not installed")
        r = subprocess.run([self.bwrap, "--ro-bind", "/", "/", "true"], capture_output=True, env={})
        if r.returncode != 0:
            raise SandboxError("bwrap cannot start: " + r.stderr.decode(errors="replace")[:200])
