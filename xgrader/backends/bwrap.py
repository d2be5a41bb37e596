"""bubblewrap backend: every namespace unshared, no network, read-only system
binds, a size-capped tmpfs at /tmp, the job running as an unprivileged uid.

As root (production), the job drops to nobody (65534) *before* bwrap runs
(the launcher: dash joins the job cgroup and sets rlimits, setpriv drops the
ids, both exec'd without a Python preexec_fn so Popen can vfork): bwrap then
builds an unprivileged user namespace and sandbox root is never host root.
As any other user (a course author, a daemon under `User=`, a pod with
`runAsNonRoot`) there is no uid to switch: bwrap builds the user namespace
directly, mapping the caller's uid to 65534 inside, so a job sees the same
identity either way. bwrap itself gets an empty environment because its pid
1 would otherwise expose the daemon's secrets in /proc/1/environ.

Limits come from a per-job cgroup when this process may create cgroups
(root, or a delegated subtree: cgroups.py). Otherwise (rlimit mode) each
process is capped by rlimits (RLIMIT_DATA for memory, RLIMIT_CPU), pids by
RLIMIT_NPROC set inside the job's own user namespace (where it counts the
job's processes only), and the host samples the job's total memory and CPU
from /proc while it waits (process.TreeUsage). The backend says which, once,
in one `sandbox_limits` log line.

The sandbox's Python is `settings.sandbox_python` (under the read-only /usr
bind), or, when `settings.sandbox_venv` is set, that virtualenv bound
read-only at /opt/venv and run as /opt/venv/bin/python3 (docs/sandbox.md).

Warm sandboxes (xgrader/backends/warm.py) use :meth:`BwrapBackend.prestart` and
:meth:`BwrapBackend.activate`: the sandbox starts with no files and the job's
rlimits and tmpfs size (the pool's key), and on activation its cgroup limits
become the job's before any student file reaches it (in rlimit mode memory and
pids are rlimits too, part of the key: warm_key).
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from xgrader.backends.base import (
    RUNNER_DIR, WORKDIR, Backend, Limits, RunningSandbox, SandboxError, SandboxJob, clean_text,
)
from xgrader.backends.cgroups import CgroupManager, JobCgroup
from xgrader.backends.channel import make_pipes
from xgrader.backends.cpus import CpuPairing
from xgrader.backends.deadlines import Deadlines
from xgrader.backends.forkserver import ZYGOTE_LIMITS, ForkedSandbox, ForkServers, InitHandle, TemplateRefused
from xgrader.backends.seccomp import build_filter, filter_fd
from xgrader.backends.process import (
    BASE_PATH, ProcessSandbox, TreeUsage, rlimit_key, rlimit_values, safe_relpath, sandbox_site_dirs,
)

if TYPE_CHECKING:
    from xgrader.config import Settings

log = structlog.get_logger(__name__)

NOBODY = 65534
VENV_DIR = "/opt/venv"
LAUNCH_TIMEOUT_S = 10.0  # spawn to bwrap's child-pid report: milliseconds normally


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


SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
# The launcher: a dash process joins the job's cgroups (writing "0", itself, to
# JobCgroup.join_file: bwrap and everything it starts are then inside from the start) and sets the
# rlimits (ulimit builtins), then, as root, execs setpriv, which drops to nobody (real,
# effective and saved ids, no groups, so no capabilities) before bwrap builds
# its user namespace. Two small execs cost less than a fork of the daemon with
# a Python preexec_fn. Arguments: N, N cgroup join files, then the command.
_JOIN = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo 0 >"$1" || exit 125; shift; n=$((n-1)); done; '
_ULIMIT_FLAGS = {resource.RLIMIT_CPU: ("t", 1), resource.RLIMIT_FSIZE: ("f", 512),  # dash: -f in 512 B blocks
                 resource.RLIMIT_NOFILE: ("n", 1), resource.RLIMIT_CORE: ("c", 512),
                 resource.RLIMIT_DATA: ("d", 1024), resource.RLIMIT_NPROC: ("p", 1)}


def _drop_to_nobody() -> list[str]:
    return [SETPRIV, "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", "--"]


def _ulimits(values: list[tuple[int, tuple[int, int]]]) -> str:
    steps = []
    for res, (soft, hard) in values:
        flag, unit = _ULIMIT_FLAGS[res]
        steps.append(f"ulimit -{flag} {-(-hard // unit)}")  # both; then the lower soft one
        if soft != hard:
            steps.append(f"ulimit -S -{flag} {-(-soft // unit)}")
    return " && ".join(steps)


def _launcher(limits: Limits, cg: JobCgroup | None, privileged: bool = True) -> list[str]:
    """The launcher in front of bwrap's argv. Without a cgroup (rlimit mode)
    it also caps each process's memory (RLIMIT_DATA); RLIMIT_NPROC is set
    inside the sandbox instead (_inside_nproc)."""
    values = rlimit_values(limits, memory=cg is None)
    # dash exports PWD; bwrap (pid 1's /proc/1/environ) gets an empty environment.
    script = _JOIN + _ulimits(values) + ' || exit 125; unset PWD; exec "$@"'
    procs = [os.path.join(d, cg.join_file) for d in cg.dirs.values()] if cg is not None else []
    return ["/bin/sh", "-c", script, "sh", str(len(procs)), *procs, *(_drop_to_nobody() if privileged else [])]


def _await_launch(proc: subprocess.Popen, info_r: int, label: str) -> None:
    """Wait (bounded) until bwrap reports its sandbox child on --info-fd. EOF
    without it: the launcher (cgroup join, rlimits, uid drop) or bwrap failed
    before any student code existed; that is the sandbox's error, raised with
    the launcher's message, never a student's verdict."""
    data = b""
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        # To EOF: bwrap writes its report in pieces and closes the fd; closing
        # our end early would kill it with SIGPIPE.
        while len(data) < 65536:
            ready, _, _ = select.select([info_r], [], [], max(deadline - time.monotonic(), 0))
            chunk = os.read(info_r, 4096) if ready else b""
            if not chunk:
                break
            data += chunk
    finally:
        os.close(info_r)
    if b"child-pid" in data:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        _, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        err = b""
    msg = clean_text(err or b"", 300).strip() or f"exit status {proc.returncode}"
    log.error("bwrap_launch_failed", label=label, error=msg)
    raise SandboxError(f"cannot start the sandbox: {msg}")


class BwrapBackend(Backend):
    name = "bwrap"
    peer_channels = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"
        self.python = str(settings.sandbox_python)
        # Root drops to nobody before bwrap (setpriv); anyone else has no uid
        # to switch and maps theirs to nobody inside the user namespace.
        self.privileged = os.geteuid() == 0
        identity = [] if self.privileged else ["--uid", str(NOBODY), "--gid", str(NOBODY)]
        # Precomputed once: per job only the tmpfs size and file copies vary.
        prefix = [
            self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", *identity,
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
        self.site_dirs = ":".join(sandbox_site_dirs(host_python, self.venv, VENV_DIR))
        self._prefix = prefix
        self._seccomp = build_filter()  # built once; each job gets a memfd copy
        self.cgroups = CgroupManager(cpus=getattr(settings, "sandbox_cpus", 1.0))
        # Jobs that run a runner-folder script fork from a server (forkserver.py).
        self.forkservers = ForkServers(self) if getattr(settings, "sandbox_fork_server", True) else None
        self.deadlines = Deadlines()  # every sandbox's host-side wall clock, on one thread
        # Only forked jobs are pinned (the fork servers apply SandboxJob.cpu).
        self.cpu_pairing = CpuPairing() if self.forkservers is not None and getattr(
            settings, "sandbox_pair_cpu", True) else None

    def paired_cpu(self) -> contextlib.AbstractContextManager[int | None]:
        return self.cpu_pairing.hold() if self.cpu_pairing is not None else contextlib.nullcontext(None)

    @property
    def rlimit_mode(self) -> bool:
        """No per-job cgroup can be made here: rlimits and the host's
        sampling bound the jobs (module docstring)."""
        return not self.cgroups.usable

    def announce(self) -> None:
        """Say once (make_backend calls it) which limits hold and which do
        not: a warning in rlimit mode, where some cannot be enforced."""
        (log.warning if self.rlimit_mode else log.info)("sandbox_limits", summary=self.limits_summary())

    def limits_summary(self) -> str:
        """The limits in force and what is not enforced, in one line."""
        who = ("as root, jobs as uid 65534" if self.privileged
               else f"as uid {os.geteuid()}, jobs as 65534 in a user namespace")
        if not self.rlimit_mode:
            v = "v2" if self.cgroups.v2 else "v1"
            quota = f", CPU quota {self.cgroups.cpus:g} core" if self.cgroups.cpus else ""
            return (f"bwrap {who}; a cgroup ({v}) per job: memory+swap, pids{quota}, CPU accounting; "
                    "rlimits: CPU time, file size, open files, no core dumps")
        return (f"bwrap {who}; no cgroup per job ({self.cgroups.reason}): memory capped per process "
                "(RLIMIT_DATA) and the job's total sampled every 0.1 s, pids per job (RLIMIT_NPROC in its "
                "user namespace), CPU time per process (RLIMIT_CPU) and the job's total sampled, file size, "
                "open files; not enforced: a CPU quota (a job may use every core), memory between two samples; "
                "for cgroup limits run as root or in a delegated cgroup (systemd-run --user --scope -p Delegate=yes)")

    def warm_key(self, limits: Limits) -> tuple:
        """What a warm sandbox fixes at start (warm.py): rlimits and the tmpfs
        size, and in rlimit mode the memory and pids bounds too."""
        return rlimit_key(limits, memory=self.rlimit_mode)

    def _argv(self, job: SandboxJob, file_fds: list[tuple[int, str]], seccomp_fd: int,
              info_fd: int | None = None, channel: str | None = None, report_fd: int = -1) -> list[str]:
        """bwrap's argv for `job` (the launcher goes in front); `channel` is
        the runner's XGRADER_CHANNEL spec. bench/sandbox_overhead calls it too.
        In rlimit mode the job runs under sandbox/job_init.py as pid 1 (it
        sets RLIMIT_NPROC inside the job's user namespace and reports the
        job's usage on `report_fd`)."""
        info = ["--info-fd", str(info_fd)] if info_fd is not None else []
        if self.rlimit_mode:
            info.append("--as-pid-1")
        argv = [*self._prefix, *info, "--seccomp", str(seccomp_fd), "--size", str(job.limits.tmp_mb * 1024 * 1024), "--tmpfs", "/tmp",
                "--dir", WORKDIR]
        for fd, dest in file_fds:
            parent = os.path.dirname(dest)
            if parent != WORKDIR:
                argv += ["--dir", parent]
            argv += ["--file", str(fd), dest]
        # bwrap's root and /dev are tmpfs owned by the sandbox user: make them read-only
        # once populated, so /tmp (size-capped) is the only writable place.
        argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", WORKDIR, "--clearenv"]
        env = self._env(job)
        if channel:
            env["XGRADER_CHANNEL"] = channel
        if job.peer is not None:
            env["XGRADER_PEER"] = "fd:%d,%d" % job.peer
        for key, value in env.items():
            argv += ["--setenv", key, value]
        cmd = list(job.argv)
        if cmd[0] == "python3":
            cmd[0] = self.python
        if self.rlimit_mode:
            cmd = [self.python, "-I", "-S", f"{RUNNER_DIR}/job_init.py", str(report_fd), str(job.limits.pids),
                   "--", *cmd]
        return argv + ["--", *cmd]

    def _env(self, job: SandboxJob) -> dict[str, str]:
        """The job's whole environment (the channels' specs aside: a forked
        job's are set by the server, at the numbers it gives them)."""
        env = {"PATH": BASE_PATH, "LANG": "C.UTF-8", **job.env}
        if self.site_dirs:  # not XGRADER_*: that prefix is the daemon's config, never in a sandbox
            env.setdefault("SANDBOX_SITE_DIRS", self.site_dirs)
        return env

    # -- fork servers (xgrader/backends/forkserver.py) ----------------------------
    def zygote_argv(self, job: SandboxJob) -> list[str]:
        """bwrap's argv for a fork server: the jobs' sandbox minus what each
        forked job builds for itself (/tmp, /proc, namespaces, seccomp), plus
        the capabilities, inside its user namespace only, that it takes to
        build them (and to empty the jobs' bounding sets). No
        --die-with-parent: it exits when its socket closes, whichever thread
        of its owner started it. Its environment is PATH and LANG only."""
        # In rlimit mode each forked job gets a user namespace of its own (its
        # RLIMIT_NPROC counts there): the server must be able to create one.
        # Jobs cannot: their seccomp filter denies unshare and namespace flags.
        drop = {"--die-with-parent", "--disable-userns"} if self.rlimit_mode else {"--die-with-parent"}
        argv = [a for a in self._prefix if a not in drop]
        argv += ["--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_NET_ADMIN", "--cap-add", "CAP_SETPCAP",
                 "--size", str(job.limits.tmp_mb * 1024 * 1024), "--tmpfs", "/tmp", "--dir", WORKDIR,
                 "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", WORKDIR, "--clearenv"]
        argv += ["--setenv", "PATH", BASE_PATH, "--setenv", "LANG", "C.UTF-8"]
        return argv + ["--", self.python, *job.argv[1:]]

    def zygote_launcher(self, cg: JobCgroup | None) -> list[str]:
        return _launcher(ZYGOTE_LIMITS, cg, self.privileged)

    def seccomp_fd(self) -> int:
        return filter_fd(self._seccomp)

    def prepare(self) -> None:
        """Start the fork servers in this process (the daemon's parent calls
        this before it forks job children, which then share them)."""
        if self.forkservers is not None:
            self.forkservers.prepare()

    def helpers(self) -> tuple:
        return tuple(self.forkservers.chain_pids()) if self.forkservers is not None else ()

    def close(self) -> None:
        if self.forkservers is not None:
            self.forkservers.close()

    def _spawn_forked(self, job: SandboxJob, server: Any, script: list[str]) -> ProcessSandbox:
        cg = self.cgroups.create(job.label, job.limits)  # None in rlimit mode
        channel = child_r = child_w = None
        if job.channel:
            channel, child_r, child_w = make_pipes()
        started = time.monotonic()
        try:
            proc = server.spawn(job, script, self._env(job), cg,
                                (child_r, child_w) if child_r is not None else None)
        except BaseException:
            if channel is not None:
                channel.close()
            if cg is not None:
                cg.remove()
            raise
        finally:
            for fd in (child_r, child_w):
                if fd is not None:
                    os.close(fd)
        if cg is not None:
            sandbox = ForkedSandbox(proc, job, started, channel, exit_128_is_signal=True,
                                    on_kill=cg.kill_once, on_done=cg.finish)
            sandbox.cgroup = cg
            return sandbox
        # Rlimit mode: the job's init (pid 1 of its pid namespace) is killed
        # through a pidfd (no pid reuse), which takes the namespace along.
        if proc.pid is None:
            proc.stdin.close()
            raise SandboxError("the fork server did not identify the job")
        init = InitHandle(proc.pid)
        sandbox = ForkedSandbox(proc, job, started, channel, exit_128_is_signal=True,
                                on_kill=init.kill, on_done=init.close)
        sandbox.init = init
        sandbox.tree = TreeUsage(proc.pid)
        return sandbox

    def start(self, job: SandboxJob) -> RunningSandbox:
        sandbox = self._spawn(job)
        sandbox.arm(self.deadlines)
        return sandbox

    def prestart(self, template: SandboxJob) -> ProcessSandbox:
        """A sandbox started for `template` (no files) but not yet a job's:
        no wall clock runs until :meth:`activate`."""
        return self._spawn(template)

    def activate(self, sandbox: ProcessSandbox, job: SandboxJob) -> None:
        """Make a pre-started (idle, runner blocked on its channel) sandbox
        `job`'s: its cgroup limits become the job's, its wall clock starts.
        Rlimits and the tmpfs size were fixed at start and must already be the
        job's (the pool keys sandboxes by them: process.rlimit_key); changing
        another uid's rlimits would need CAP_SYS_RESOURCE, which a container's
        root often lacks."""
        cg = sandbox.cgroup
        if cg is None and not self.rlimit_mode:
            raise SandboxError("warm sandbox without a cgroup")
        if self.warm_key(sandbox.job.limits) != self.warm_key(job.limits):
            raise SandboxError("warm sandbox started with other rlimits or tmpfs size")
        try:
            if cg is not None:
                cg.set_limits(job.limits)
        except OSError as exc:  # e.g. a memory limit below what the idle runner uses
            raise SandboxError(f"cannot set the warm sandbox's limits: {exc}") from None
        sandbox.rebind(job)
        sandbox.arm(self.deadlines)

    def _spawn(self, job: SandboxJob) -> ProcessSandbox:
        target = self.forkservers.for_job(job) if self.forkservers is not None else None
        if target is not None:
            try:
                try:
                    return self._spawn_forked(job, *target)
                except TemplateRefused as exc:  # no template server for it: forked as usual
                    log.debug("template_refused", label=job.label, reason=str(exc)[:200])
                    return self._spawn_forked(job.model_copy(update={"template": None}), *target)
            except ConnectionError as exc:  # the server died: this job starts cold
                log.warning("fork_server_lost", label=job.label, error=str(exc)[:200])
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
            if job.peer is not None:  # kept at their numbers (pass_fds), like the channel's
                sources += list(job.peer)
            seccomp = filter_fd(self._seccomp)
            file_fds.append((seccomp, ""))  # closed with the files below
            info_r, info_w = os.pipe()
            file_fds.append((info_w, ""))
            report_r = report_w = -1
            if self.rlimit_mode:
                report_r, report_w = os.pipe()
                file_fds.append((report_w, ""))
            # The fds keep their numbers in the child (pass_fds): bwrap and the
            # runner are told which they are.
            argv = self._argv(job, file_fds[:-3] if report_w >= 0 else file_fds[:-2], seccomp, info_w,
                              f"fd:{child_r},{child_w}" if job.channel else None, report_w)
            sources += [fd for fd, _ in file_fds]

            cg = self.cgroups.create(job.label, job.limits)
            argv = [*_launcher(job.limits, cg, self.privileged), *argv]
            started = time.monotonic()
            try:
                # No preexec_fn: CPython then spawns with vfork (a fork of the
                # daemon-sized parent costs ~2 ms of page-table copying).
                proc = subprocess.Popen(
                    argv, env={}, cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, start_new_session=True, close_fds=True, pass_fds=sources,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                os.close(info_r)
                if report_r >= 0:
                    os.close(report_r)
                if cg is not None:
                    cg.remove()
                raise SandboxError(f"cannot start bwrap: {exc}") from None
        finally:
            for fd, _ in file_fds:
                os.close(fd)
        for fd in (child_r, child_w):
            if fd is not None:
                os.close(fd)
        try:
            _await_launch(proc, info_r, job.label)
        except SandboxError:
            if channel is not None:
                channel.close()
            if cg is not None:
                cg.remove()
            if report_r >= 0:
                os.close(report_r)
            raise
        log.debug("bwrap_started", label=job.label, pid=proc.pid)

        sandbox = ProcessSandbox(proc, job, started, channel, exit_128_is_signal=True,
                                 on_kill=cg.kill if cg else None, on_done=cg.finish if cg else None)
        sandbox.cgroup = cg
        if cg is None:
            sandbox.tree = TreeUsage(proc.pid)
            sandbox.report_fd = report_r
        return sandbox

    def kill_label(self, label: str) -> None:
        """The label's cgroups, and orphans (their creator, e.g. the killed
        job child that ran warm sandboxes, is dead): killed and removed.
        In rlimit mode there are none: a job's processes die with its
        sandbox's pid 1 (--die-with-parent, or the killed job child's fork
        server job init, killed through its pid namespace)."""
        if self.rlimit_mode:
            return
        for cg in self.cgroups.stale(label):
            cg.remove()

    def cleanup_stale(self) -> None:
        """At daemon start: cgroups whose creator died (a crashed predecessor
        or its job children) are killed and removed. Processes need nothing:
        bwrap runs with --die-with-parent and its pid namespace dies with it;
        files live in memfds and the sandbox's tmpfs, never on the host.
        Nothing to do in rlimit mode (no cgroups of ours; those of another
        user's daemon in a shared hierarchy are not ours to remove)."""
        if self.rlimit_mode:
            return
        removed = 0
        for cg in self.cgroups.stale():
            removed += 1
            cg.remove()
        if removed:
            log.info("stale_cgroups_removed", count=removed)

    def check(self) -> None:
        """The readiness probe, and make_backend's first look: bwrap runs and
        can build a job's namespaces as this user. Raises SandboxError saying
        what to install or enable."""
        if sys.platform != "linux":
            raise SandboxError(NEEDS_LINUX)
        if not os.access(self.bwrap, os.X_OK):
            raise SandboxError(f"bubblewrap is not installed ({self.bwrap} not found). {INSTALL_BWRAP}")
        if self.privileged and not os.access(SETPRIV, os.X_OK):
            raise SandboxError("setpriv (util-linux) not installed: as root it drops the sandbox to nobody")
        if self.venv is not None:
            if not (self.venv / "bin" / "python3").exists():
                raise SandboxError(f"sandbox_venv {self.venv} has no bin/python3")
            if self.privileged and not _nobody_can_enter(self.venv.resolve()):
                raise SandboxError(f"sandbox_venv {self.venv} is not readable by uid {NOBODY} (check its parents' modes)")
        # The namespaces a job gets, as the identity jobs run as.
        error = self._probe()
        if error and "hostname" in error and "--hostname" in self._prefix:
            # A container's seccomp profile may deny sethostname without
            # CAP_SYS_ADMIN (podman's and Docker's defaults do): jobs keep
            # their own UTS namespace, with the container's name in it.
            i = self._prefix.index("--hostname")
            del self._prefix[i:i + 2]
            log.warning("sandbox_hostname_denied", detail="jobs see the host's hostname in their own UTS namespace")
            error = self._probe()
        if error:
            raise SandboxError(explain_bwrap_failure(error))
        if self.forkservers is not None and self.forkservers.prepared:
            # The daemon's parent checks periodically: a fork server that died
            # is started again (jobs start cold meanwhile).
            self.forkservers.prepare()

    def _probe(self) -> str | None:
        """bwrap's error when it cannot build a job's namespaces (None: it can)."""
        hostname = ["--hostname", "sandbox"] if "--hostname" in self._prefix else []
        probe = [*(_drop_to_nobody() if self.privileged else []), self.bwrap, "--unshare-all", "--unshare-user",
                 "--disable-userns", *hostname, "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc",
                 "true"]
        try:
            r = subprocess.run(probe, capture_output=True, env={}, timeout=LAUNCH_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"bubblewrap cannot start: {exc}"
        return None if r.returncode == 0 else (clean_text(r.stderr, 400).strip() or f"exit status {r.returncode}")


INSTALL_BWRAP = ("Install it (Debian/Ubuntu: apt install bubblewrap; Fedora: dnf install bubblewrap; "
                 "Arch: pacman -S bubblewrap), or run a Docker-compatible engine (Docker Desktop, "
                 "podman, colima) for --sandbox docker.")
NEEDS_LINUX = ("the bwrap sandbox needs Linux; on macOS or Windows run a Docker-compatible engine "
               "(Docker Desktop, podman machine, colima) with the grading image, and use --sandbox docker "
               "(auto picks it when the engine answers)")
ENABLE_USERNS = ("unprivileged user namespaces are not available to this user: enable them "
                 "(sysctl kernel.unprivileged_userns_clone=1 on Debian-based kernels, "
                 "user.max_user_namespaces above 0; on Ubuntu 23.10 and later "
                 "kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap), "
                 "or run a Docker-compatible engine for --sandbox docker")


def explain_bwrap_failure(stderr: str) -> str:
    """bwrap's own error, with what to do about the usual causes."""
    text = stderr or "no error message"
    low = text.lower()
    if "unrecognized option" in low or "unknown option" in low:
        return f"bubblewrap is too old (need 0.8 or later for --disable-userns): {text}"
    if any(s in low for s in ("namespace", "uid map", "uid_map", "operation not permitted", "no space left",
                              "permission denied")):
        return f"bubblewrap cannot create the sandbox's namespaces ({text}): {ENABLE_USERNS}"
    return f"bubblewrap cannot start: {text}"
