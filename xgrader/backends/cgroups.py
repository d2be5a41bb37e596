"""Per-job cgroups (v1 split hierarchies or v2 unified): memory incl. swap, pids,
CPU quota and accounting; OOM detection, peak memory, kill-all and removal.

Job cgroups are created under the daemon's own cgroup (from /proc/self/cgroup),
named `xgrader-<label>-<creator pid>-<n>`. The creator pid lets cleanup find
orphans (creator dead: a crashed daemon or a SIGKILLed job child) without
touching the live cgroups of another daemon or job sharing the hierarchy.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

import structlog

from xgrader.backends.base import Limits
from xgrader.backends.process import pid_alive

log = structlog.get_logger(__name__)

ROOT = Path("/sys/fs/cgroup")
PREFIX = "xgrader-bw-"  # distinct from other tools (the docker backend's cgroup parents)
CPU_PERIOD_US = 100_000
DAEMON_LEAF = "xgrader-daemon"  # cgroup v2: where the daemon's own processes go (see _prepare_v2)
_seq = itertools.count()


def _own_paths() -> dict[str, str]:
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            paths[c] = path
    return paths


def _write(path: Path | str, value: str) -> None:
    # os-level: a job touches a dozen of these files; pathlib's and io's
    # layers cost more than the write itself.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # as open("w")
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 65536).decode()
    finally:
        os.close(fd)


def creator_pid(name: str) -> int | None:
    """The pid encoded in a job cgroup's name (second-to-last dash field)."""
    parts = name.rsplit("-", 2)
    if len(parts) != 3 or not parts[0].startswith(PREFIX) or not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    return int(parts[1])


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)[:60]


def _prepare_v2(parent: Path) -> str | None:
    """Job cgroups under `parent` need memory and pids (and cpu) enabled in its
    cgroup.subtree_control. The kernel refuses that while `parent` itself holds
    processes ("no internal processes"), which is the case for a systemd
    service with Delegate=yes or a `systemd-run --user --scope -p Delegate=yes`
    session: then the daemon's processes move to a leaf,
    `parent`/xgrader-daemon, first. None when ready, else why not."""
    try:
        available = set((parent / "cgroup.controllers").read_text().split())
        if not {"memory", "pids"} <= available:
            return f"memory and pids are not delegated to {parent}"
        enabled = set((parent / "cgroup.subtree_control").read_text().split())
        missing = sorted(({"memory", "pids", "cpu"} & available) - enabled)
        if not missing:
            return None
        change = " ".join("+" + c for c in missing)
        try:
            _write(parent / "cgroup.subtree_control", change)
        except OSError:  # EBUSY: processes in parent
            leaf = parent / DAEMON_LEAF
            leaf.mkdir(exist_ok=True)
            for pid in (parent / "cgroup.procs").read_text().split():
                try:
                    _write(leaf / "cgroup.procs", pid)
                except OSError:  # exited meanwhile, or a kernel thread
                    pass
            _write(parent / "cgroup.subtree_control", change)
        return None
    except OSError as exc:
        return f"cannot enable the controllers in {parent}: {exc.strerror or exc}"


class CgroupManager:
    """Finds where job cgroups go: below the cgroup this process is in, which
    must be writable by it (root, or a subtree delegated to its user).
    `usable` is False when memory/pids cannot be managed there; `reason` then
    says why (the backend reports it once: rlimits are the bounds then).
    `cpus` is the CPU quota per job (1.0 = one core's worth of time per
    period)."""

    def __init__(self, root: Path = ROOT, cpus: float | None = 1.0) -> None:
        own = _own_paths()
        self.v2 = (root / "cgroup.controllers").exists()
        self.cpus = cpus
        if self.v2:
            parent = root / own.get("", "/").lstrip("/")
            if parent.name == DAEMON_LEAF:  # moved there by an earlier manager (see _prepare_v2)
                parent = parent.parent
            self.parents = {"unified": parent}
            self.reason = _prepare_v2(parent)
            required = ["unified"] if self.reason is None else ["unavailable"]
        else:
            self.reason = None
            self.parents = {c: root / c / own.get(c, "/").lstrip("/") for c in ("memory", "pids", "cpuacct", "cpu")
                            if (root / c).is_dir()}
            required = ["memory", "pids"]
            # cpu/cpuacct are extras: dropped (not fatal) when not writable.
            for c in ("cpu", "cpuacct"):
                if c in self.parents and not os.access(self.parents[c], os.W_OK):
                    del self.parents[c]
        self.usable = all(c in self.parents and os.access(self.parents[c], os.W_OK) for c in required)
        if not self.usable and self.reason is None:
            missing = [c for c in required if c not in self.parents]
            self.reason = (f"no {', '.join(missing)} cgroup hierarchy" if missing else
                           "not writable by this user: " + ", ".join(str(self.parents[c]) for c in required))

    def create(self, label: str, limits: Limits) -> "JobCgroup | None":
        if not self.usable:
            return None
        name = f"{PREFIX}{_safe(label)}-{os.getpid()}-{next(_seq)}"
        return JobCgroup({c: p / name for c, p in self.parents.items()}, self.v2, limits, self.cpus)

    def _found(self) -> dict[str, dict[str, Path]]:
        found: dict[str, dict[str, Path]] = {}
        for c, parent in self.parents.items():
            for d in parent.glob(PREFIX + "*"):
                found.setdefault(d.name, {})[c] = d
        return found

    def stale(self, label: str | None = None) -> list["JobCgroup"]:
        """Job cgroups whose creator process is gone (orphans), plus, when
        `label` is given, every cgroup of that label."""
        out = []
        for name, dirs in self._found().items():
            pid = creator_pid(name)
            if pid is None:
                continue  # not a job cgroup of ours (another tool's, e.g. a container engine's)
            mine = label is not None and name.rsplit("-", 2)[0] == PREFIX + _safe(label)
            if mine or not pid_alive(pid):
                out.append(JobCgroup(dirs, self.v2, None))
        return out

    def owned_by(self, pid: int) -> list[str]:
        """Names of job cgroups created by `pid` (leak checks in tests, ops)."""
        return [n for n in self._found() if creator_pid(n) == pid]


class JobCgroup:
    def __init__(self, dirs: dict[str, Path], v2: bool, limits: Limits | None, cpus: float | None = None) -> None:
        self.dirs = dirs
        self.v2 = v2
        self.cpus = cpus
        self._mem: int | None = None
        self._p = {c: f"{d}/" for c, d in dirs.items()}  # string prefixes for the hot paths
        if limits is not None:
            for d in self._p.values():
                try:
                    os.mkdir(d)
                except FileExistsError:
                    pass
            self.set_limits(limits)

    def set_limits(self, limits: Limits) -> None:
        """Applies (or changes: warm sandboxes) memory, swap, pids and CPU quota."""
        mem = limits.memory_mb * 1024 * 1024
        quota = int(CPU_PERIOD_US * self.cpus) if self.cpus else None
        if self.v2:
            d = self._p["unified"]
            _write(d + "memory.max", str(mem))
            if os.path.exists(d + "memory.swap.max"):
                _write(d + "memory.swap.max", "0")
            _write(d + "pids.max", str(limits.pids))
            if quota and os.path.exists(d + "cpu.max"):
                _write(d + "cpu.max", f"{quota} {CPU_PERIOD_US}")
            return
        m = self._p["memory"]
        memsw = m + "memory.memsw.limit_in_bytes"
        # v1 requires limit_in_bytes <= memsw.limit_in_bytes at every step.
        order = [m + "memory.limit_in_bytes", memsw]
        if self._mem is not None and mem > self._mem:
            order.reverse()
        for path in order:
            try:
                _write(path, str(mem))
            except FileNotFoundError:  # no swap accounting on this kernel
                pass
        self._mem = mem
        _write(self._p["pids"] + "pids.max", str(limits.pids))
        if quota and "cpu" in self._p:
            _write(self._p["cpu"] + "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(self._p["cpu"] + "cpu.cfs_quota_us", str(quota))

    @property
    def join_file(self) -> str:
        """What a process writes "0" to, to join this cgroup itself. On v1 the
        per-thread `tasks` file: moving the writer's own (single) thread skips
        the kernel's global threadgroup lock, whose write side waits for an RCU
        grace period (8-20 ms of wall time per job on an idle 2-core VM, every
        job paying it once starts are more than ~30 ms apart); `cgroup.procs`
        takes that lock. v2 allows only `cgroup.procs` between domain cgroups
        (mounting cgroup2 with `favordynmods` avoids the wait there:
        docs/operators.md)."""
        return "cgroup.procs" if self.v2 else "tasks"

    def join(self, pid: int = 0) -> None:
        """Called in the child before exec (pid 0 = the caller)."""
        for d in self.dirs.values():
            _write(d / "cgroup.procs", str(pid or os.getpid()))

    def pids(self) -> set[int]:
        pids: set[int] = set()
        for d in self.dirs.values():
            try:
                pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return pids

    def _live_pids(self) -> set[int]:
        """The job's pids from one hierarchy (the pids controller's, else any):
        every job process joined all of them before exec and children inherit
        membership, so one read per check instead of one per controller (the
        kill check runs several times per job). Falls back to the union when
        that directory is gone (a half-removed orphan)."""
        d = self._p.get("pids") or self._p.get("unified") or next(iter(self._p.values()))
        try:
            return {int(x) for x in _read(d + "cgroup.procs").split()}
        except OSError:
            return self.pids()

    def _cgroup_kill(self) -> bool:
        """v2: the kernel kills the whole cgroup; False where it cannot (v1,
        or before Linux 5.14)."""
        if not self.v2:
            return False
        try:
            _write(self._p["unified"] + "cgroup.kill", "1")
            return True
        except OSError:
            return False

    def _sweep(self) -> bool:
        """SIGKILL every process in the job now; False when there was none."""
        pids = self._live_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return bool(pids)

    def kill_once(self) -> None:
        """SIGKILL everything in the job now, without waiting for it to go.
        Enough for a forked job: its init (pid 1 of the job's pid namespace)
        is in here, and the kernel takes every process of that namespace down
        with it; the host then waits for the init's exit status (an event, no
        polling) and finish() checks the cgroup is empty."""
        if not self._cgroup_kill():
            self._sweep()

    def kill(self) -> None:
        self._cgroup_kill()
        # v1 (and the v2 fallback): SIGKILL until empty; a forking job cannot outrun
        # the loop because pids.max bounds it and killed pids never come back.
        for _ in range(1000):
            if not self._sweep():
                return
            time.sleep(0.001)
        log.warning("cgroup_not_empty", cgroup=str(next(iter(self.dirs.values()))))

    def cpu_usage(self) -> float | None:
        """CPU seconds used by the whole job so far (None: not accounted)."""
        try:
            if self.v2:
                for line in _read(self._p["unified"] + "cpu.stat").splitlines():
                    if line.startswith("usage_usec "):
                        return int(line.split()[1]) / 1e6
                return None
            if "cpuacct" in self._p:
                return int(_read(self._p["cpuacct"] + "cpuacct.usage")) / 1e9
        except (OSError, ValueError):
            pass
        return None

    def stats(self) -> dict:
        out: dict = {}
        try:
            if self.v2:
                d = self._p["unified"]
                events = dict(l.split() for l in _read(d + "memory.events").splitlines())
                out["oom"] = int(events.get("oom_kill", 0)) > 0
                if os.path.exists(d + "memory.peak"):
                    out["peak_memory_mb"] = int(_read(d + "memory.peak")) / 2**20
                cpu = dict(l.split() for l in _read(d + "cpu.stat").splitlines())
                out["cpu_s"] = int(cpu["usage_usec"]) / 1e6
            else:
                m = self._p["memory"]
                ctl = dict(l.split() for l in _read(m + "memory.oom_control").splitlines())
                if "oom_kill" in ctl:
                    out["oom"] = int(ctl["oom_kill"]) > 0
                else:
                    out["oom"] = int(_read(m + "memory.failcnt")) > 0
                out["peak_memory_mb"] = int(_read(m + "memory.max_usage_in_bytes")) / 2**20
                if "cpuacct" in self._p:
                    out["cpu_s"] = int(_read(self._p["cpuacct"] + "cpuacct.usage")) / 1e9
        except (OSError, KeyError, ValueError) as exc:
            log.warning("cgroup_stats_failed", error=str(exc))
        return out

    def finish(self) -> dict:
        """A job's end: everything in it killed, its accounting read, the
        cgroup removed. Returns stats()."""
        self.kill()
        stats = self.stats()
        self.remove()
        return stats

    def remove(self) -> bool:
        """Kill what is left and rmdir every controller's directory, retrying
        while the kernel still reports it busy (exiting tasks). False if any
        directory survived (it is an orphan for the next cleanup_stale)."""
        self.kill()
        ok = True
        for d in self.dirs.values():
            delay = 0.001
            for _ in range(40):  # ~2 s in all, backing off
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the last task exits
                    self.kill()
                    time.sleep(delay)
                    delay = min(delay * 2, 0.1)
            else:
                ok = False
                log.warning("cgroup_remove_failed", cgroup=str(d))
        return ok
