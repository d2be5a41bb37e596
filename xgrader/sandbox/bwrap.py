"""bubblewrap backend: every namespace unshared, no network, read-only system
binds, a size-capped tmpfs at /tmp, the job running as an unprivileged uid.

The daemon runs as root here, so the child drops to nobody (65534) *before*
exec'ing bwrap: bwrap then builds an unprivileged user namespace and sandbox
root is never host root. bwrap itself gets an empty environment because its
pid 1 would otherwise expose the daemon's secrets in /proc/1/environ.

The sandbox's Python is `settings.sandbox_python` (under the read-only /usr
bind), or, when `settings.sandbox_venv` is set, that virtualenv bound
read-only at /opt/venv and run as /opt/venv/bin/python3 (docs/sandbox.md).

Warm sandboxes (xgrader/sandbox/warm.py) use :meth:`BwrapBackend.prestart` and
:meth:`BwrapBackend.activate`: the sandbox starts with no files and the job's
rlimits and tmpfs size (the pool's key), and on activation its cgroup limits
become the job's before any student file reaches it.
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
    BASE_PATH, ProcessSandbox, arrange_fds, rlimit_key, safe_relpath, set_rlimits,
)

log = structlog.get_logger(__name__)

NOBODY = 65534
VENV_DIR = "/opt/venv"


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


def _nobody_can_enter(path: Path) -> bool:
    """Every directory down to `path` searchable by others (bwrap binds as nobody)."""
    for p in [*reversed(path.parents), path]:
        st = p.stat()
        if not (st.st_mode & 0o001 or st.st_uid == NOBODY):
            return False
    return True


def sandbox_site_dirs(python: str, venv: Path | None) -> list[str]:
    """The site-packages directories of the sandbox's Python as seen inside the
    sandbox, for XGRADER_SITE_DIRS: the runner runs with -S and appends these
    to sys.path itself, so student code imports course packages while no .pth
    or sitecustomize is ever run. Same list and order as site.getsitepackages()
    in the sandbox: the venv's own directory (at VENV_DIR) first, then the
    interpreter's unless the venv excludes system site packages. Asked of the
    interpreter once, with -S (the site module would run the venv's *.pth on
    the host); [] with a warning if it cannot tell (student code then sees
    the standard library only)."""
    code = "import site, sys; print('%d.%d' % sys.version_info[:2]); print(*site.getsitepackages(), sep='\\n')"
    try:
        r = subprocess.run([python, "-I", "-S", "-c", code], capture_output=True, env={}, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("sandbox_site_dirs_unknown", python=python, error=str(exc))
        return []
    version, *system = r.stdout.decode(errors="replace").splitlines()
    out = []
    if venv is not None:
        own = f"lib/python{version}/site-packages"
        if (venv / own).is_dir():
            out.append(f"{VENV_DIR}/{own}")
        cfg = venv / "pyvenv.cfg"
        conf = dict(line.split("=", 1) for line in cfg.read_text(errors="replace").splitlines() if "=" in line) \
            if cfg.is_file() else {}
        conf = {k.strip().lower(): v.strip().lower() for k, v in conf.items()}
        if conf.get("include-system-site-packages", "true") != "true":
            return out
    return out + [d for d in system if os.path.isdir(d)]


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
            # The loader's cache (public: library paths only) spares every
            # library lookup a walk of the hwcaps/tls directories (~1.5 ms a start).
            "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
            "--dev", "/dev", "--proc", "/proc",
            "--ro-bind", str(Path(settings.runner_dir).resolve()), RUNNER_DIR,
        ]
        venv = getattr(settings, "sandbox_venv", None)
        if venv:
            # The venv's bin/python3 is a symlink into /usr, which is bound too.
            prefix += ["--ro-bind", str(Path(venv).resolve()), VENV_DIR]
            self.python = f"{VENV_DIR}/bin/python3"
        self.venv = Path(venv) if venv else None
        host_python = str(Path(venv) / "bin" / "python3") if venv else self.python
        self.site_dirs = ":".join(sandbox_site_dirs(host_python, self.venv))
        self._prefix = prefix
        self._seccomp = build_filter()  # built once; each job gets a memfd copy
        self.cgroups = CgroupManager(cpus=getattr(settings, "sandbox_cpus", 1.0))

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
        if self.site_dirs:
            env.setdefault("XGRADER_SITE_DIRS", self.site_dirs)
        for key, value in env.items():
            argv += ["--setenv", key, value]
        cmd = list(job.argv)
        if cmd[0] == "python3":
            cmd[0] = self.python
        return argv + ["--", *cmd]

    def start(self, job: SandboxJob) -> RunningSandbox:
        sandbox = self._spawn(job)
        sandbox.arm()
        return sandbox

    def prestart(self, template: SandboxJob) -> ProcessSandbox:
        """A sandbox started for `template` (no files) but not yet a job's:
        no wall clock runs until :meth:`activate`. Needs cgroups (its limits
        change on activation); raises SandboxError without them."""
        if not self.cgroups.usable:
            raise SandboxError("warm sandboxes need cgroups")
        return self._spawn(template)

    def activate(self, sandbox: ProcessSandbox, job: SandboxJob) -> None:
        """Make a pre-started (idle, runner blocked on its channel) sandbox
        `job`'s: its cgroup limits become the job's, its wall clock starts.
        Rlimits and the tmpfs size were fixed at start and must already be the
        job's (the pool keys sandboxes by them: unsafe.rlimit_key); changing
        another uid's rlimits would need CAP_SYS_RESOURCE, which a container's
        root often lacks."""
        cg = sandbox.cgroup
        if cg is None:
            raise SandboxError("warm sandbox without a cgroup")
        if rlimit_key(sandbox.job.limits) != rlimit_key(job.limits):
            raise SandboxError("warm sandbox started with other rlimits or tmpfs size")
        try:
            cg.set_limits(job.limits)
        except OSError as exc:  # e.g. a memory limit below what the idle runner uses
            raise SandboxError(f"cannot set the warm sandbox's limits: {exc}") from None
        sandbox.rebind(job)
        sandbox.arm()

    def _spawn(self, job: SandboxJob) -> ProcessSandbox:
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

            # RLIMIT_NPROC is per host uid (every sandbox runs as nobody): only a
            # coarse fork-bomb brake, used when no pids cgroup bounds the job.
            nproc = None if cg is not None else job.limits.pids * 4

            def preexec() -> None:
                if cg is not None:
                    cg.join()
                arrange_fds(sources)
                set_rlimits(job.limits, nproc=nproc)  # after: RLIMIT_NOFILE would refuse the high fds
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

        sandbox = ProcessSandbox(proc, job, started, channel, exit_128_is_signal=True,
                                 on_kill=cg.kill if cg else None, on_done=done)
        sandbox.cgroup = cg
        return sandbox

    def kill_label(self, label: str) -> None:
        """The label's cgroups, and orphans (their creator, e.g. the killed
        job child that ran warm sandboxes, is dead): killed and removed."""
        for cg in self.cgroups.stale(label):
            cg.remove()

    def cleanup_stale(self) -> None:
        """At daemon start: cgroups whose creator died (a crashed predecessor
        or its job children) are killed and removed. Processes need nothing:
        bwrap runs with --die-with-parent and its pid namespace dies with it;
        files live in memfds and the sandbox's tmpfs, never on the host."""
        removed = 0
        for cg in self.cgroups.stale():
            removed += 1
            cg.remove()
        if removed:
            log.info("stale_cgroups_removed", count=removed)

    def check(self) -> None:
        if not os.access(self.bwrap, os.X_OK):
            raise SandboxError("bwrap not installed")
        if self.venv is not None:
            if not (self.venv / "bin" / "python3").exists():
                raise SandboxError(f"sandbox_venv {self.venv} has no bin/python3")
            if not _nobody_can_enter(self.venv.resolve()):
                raise SandboxError(f"sandbox_venv {self.venv} is not readable by uid {NOBODY} (check its parents' modes)")
        r = subprocess.run([self.bwrap, "--ro-bind", "/", "/", "true"], capture_output=True, env={})
        if r.returncode != 0:
            raise SandboxError("bwrap cannot start: " + r.stderr.decode(errors="replace")[:200])
