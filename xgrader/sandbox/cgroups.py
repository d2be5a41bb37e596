"""Per-job cgroups (v1 split hierarchies or v2 unified): memory incl. swap, pids,
CPU accounting; OOM detection, peak memory, kill-all and removal.

Job cgroups are created under the daemon's own cgroup (from /proc/self/cgroup),
named `xgrader-<label>-<n>` so cleanup_stale() finds a crashed predecessor's.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

import structlog

from xgrader.sandbox.base import Limits

log = structlog.get_logger(__name__)

ROOT = Path("/sys/fs/cgroup")
PREFIX = "xgrader-"
_seq = itertools.count()


def _own_paths() -> dict[str, str]:
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            paths[c] = path
    return paths


def _write(path: Path, value: str) -> None:
    path.write_text(value)


class CgroupManager:
    """Finds where job cgroups go; `None` dirs mean that controller is unusable."""

    def __init__(self, root: Path = ROOT) -> None:
        own = _own_paths()
        self.v2 = (root / "cgroup.controllers").exists()
        if self.v2:
            self.parents = {"unified": root / own.get("", "/").lstrip("/")}
        else:
            self.parents = {c: root / c / own.get(c, "/").lstrip("/") for c in ("memory", "pids", "cpuacct")}
        self.usable = all(os.access(p, os.W_OK) for p in self.parents.values())
        if not self.usable:
            log.warning("cgroups_unavailable", reason="not writable; rlimits only", parents=[str(p) for p in self.parents.values()])

    def create(self, label: str, limits: Limits) -> "JobCgroup | None":
        if not self.usable:
            return None
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)[:60]
        name = f"{PREFIX}{safe}-{os.getpid()}-{next(_seq)}"
        return JobCgroup({c: p / name for c, p in self.parents.items()}, self.v2, limits)

    def stale(self, label: str | None = None) -> list["JobCgroup"]:
        found: dict[str, dict[str, Path]] = {}
        for c, parent in self.parents.items():
            for d in parent.glob(PREFIX + "*"):
                if label is None or d.name.startswith(f"{PREFIX}{label}-"):
                    found.setdefault(d.name, {})[c] = d
        return [JobCgroup(dirs, self.v2, None) for dirs in found.values()]


class JobCgroup:
    def __init__(self, dirs: dict[str, Path], v2: bool, limits: Limits | None) -> None:
        self.dirs = dirs
        self.v2 = v2
        if limits is not None:
            for d in dirs.values():
                d.mkdir(exist_ok=True)
            self._limit(limits)

    def _limit(self, limits: Limits) -> None:
        mem = limits.memory_mb * 1024 * 1024
        if self.v2:
            d = self.dirs["unified"]
            _write(d / "memory.max", str(mem))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            _write(d / "pids.max", str(limits.pids))
            return
        m = self.dirs["memory"]
        _write(m / "memory.limit_in_bytes", str(mem))
        if (m / "memory.memsw.limit_in_bytes").exists():
            _write(m / "memory.memsw.limit_in_bytes", str(mem))
        _write(self.dirs["pids"] / "pids.max", str(limits.pids))

    def join(self, pid: int = 0) -> None:
        """Called in the child before exec (pid 0 = the caller)."""
        for d in self.dirs.values():
            _write(d / "cgroup.procs", str(pid or os.getpid()))

    def _pids(self) -> set[int]:
        pids: set[int] = set()
        for d in self.dirs.values():
            try:
                pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return pids

    def kill(self) -> None:
        if self.v2 and (self.dirs["unified"] / "cgroup.kill").exists():
            try:
                _write(self.dirs["unified"] / "cgroup.kill", "1")
            except OSError:
                pass
        # v1 (and the v2 fallback): SIGKILL until empty; a forking job cannot outrun
        # the loop because pids.max bounds it and killed pids never come back.
        for _ in range(200):
            pids = self._pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)

    def stats(self) -> dict:
        out: dict = {}
        try:
            if self.v2:
                d = self.dirs["unified"]
                events = dict(l.split() for l in (d / "memory.events").read_text().splitlines())
                out["oom"] = int(events.get("oom_kill", 0)) > 0
                if (d / "memory.peak").exists():
                    out["peak_memory_mb"] = int((d / "memory.peak").read_text()) / 2**20
                cpu = dict(l.split() for l in (d / "cpu.stat").read_text().splitlines())
                out["cpu_s"] = int(cpu["usage_usec"]) / 1e6
            else:
                m = self.dirs["memory"]
                ctl = dict(l.split() for l in (m / "memory.oom_control").read_text().splitlines())
                if "oom_kill" in ctl:
                    out["oom"] = int(ctl["oom_kill"]) > 0
                else:
                    out["oom"] = int((m / "memory.failcnt").read_text()) > 0
                out["peak_memory_mb"] = int((m / "memory.max_usage_in_bytes").read_text()) / 2**20
                out["cpu_s"] = int((self.dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
        except (OSError, KeyError, ValueError) as exc:
            log.warning("cgroup_stats_failed", error=str(exc))
        return out

    def remove(self) -> None:
        self.kill()
        for d in self.dirs.values():
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the last task exits
                    time.sleep(0.01)
