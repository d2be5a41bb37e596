"""One CPU for the two sandboxes of a pytest-kind submission.

The test sandbox calls the student's runner over the peer channel, one call
at a time, often a hundred times per submission: each call wakes the other
sandbox and sleeps until it answers. When the two run on different CPUs every
one of those wake-ups crosses CPUs (an inter-processor interrupt, an idle CPU
woken, and on a virtual machine an exit to the hypervisor), which costs more
than the call itself. Pinned to one CPU (sched_setaffinity at the job's
set-up) they hand the CPU back and forth, and the submission costs less CPU
and less time; nothing runs in parallel inside one submission anyway.

Which CPU: each CPU the host may use has a lock file; a submission holds the
first free one (flock, non-blocking) while it is graded, trying first the
CPU the calling thread runs on and then the next ones: the scheduler has put
the thread there, and graders that do not share the lock folder (one per
container on a many-core node) start from different CPUs instead of all
from the first. Locks are shared by every process of the same user on the machine
(a daemon's job children, `xgrader batch` threads, several daemons), and the
kernel drops a lock when its holder dies, so nothing leaks. When every CPU is
held (more submissions at once than CPUs) the submission is not pinned and
the scheduler places it as usual.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import structlog

log = structlog.get_logger()


def default_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"xgrader-cpus-{os.getuid()}"


class CpuPairing:
    """Hands out the CPUs of `cpus` (default: those this process may run on),
    one submission per CPU at a time, across processes (see the module doc)."""

    def __init__(self, cpus: set[int] | None = None, lock_dir: Path | None = None) -> None:
        self.cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
        self.lock_dir = lock_dir or default_lock_dir()
        self._getcpu = _libc_getcpu()   # the CPU the calling thread runs on
        self._folder_ok = False

    @contextlib.contextmanager
    def hold(self) -> Iterator[int | None]:
        """The CPU this submission's sandboxes run on, held until the block
        ends; None when there is nothing to pin to (one CPU, every CPU held,
        the lock folder unusable). Meanwhile the calling thread (the host's
        side of the submission: it reads the test sandbox's results every few
        milliseconds) runs on the other CPUs, so its wake-ups do not
        interrupt the two sandboxes."""
        fd = -1
        cpu = None
        if len(self.cpus) > 1:
            fd, cpu = self._take()
        before = _step_aside(cpu) if cpu is not None else None
        try:
            yield cpu
        finally:
            if before is not None:
                _set_affinity(before)
            if fd >= 0:
                os.close(fd)  # releases the lock

    def _take(self) -> tuple[int, int | None]:
        if not self._folder_ok:
            why = _own_folder(self.lock_dir)
            if why is not None:
                log.warning("cpu_pairing_unavailable", folder=str(self.lock_dir), error=why)
                self.cpus = []  # said once: no pairing from here on
                return -1, None
            self._folder_ok = True
        n = len(self.cpus)
        now = self._getcpu() if self._getcpu is not None else -1
        first = self.cpus.index(now) if now in self.cpus else 0
        for cpu in (self.cpus[(first + i) % n] for i in range(n)):
            try:
                fd = os.open(self.lock_dir / f"cpu{cpu}.lock",
                             os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held by another submission
                os.close(fd)
                continue
            return fd, cpu
        return -1, None


def _own_folder(folder: Path) -> str | None:
    """Make `folder` (mode 0700) unless it exists; None when it is a real
    folder of this user that nobody else may write to, else why not. The
    name is predictable under a shared /tmp: another user's folder (or a
    symlink) there must not decide where this process creates files."""
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError as exc:
        return str(exc)
    if not stat.S_ISDIR(st.st_mode):
        return "not a folder"
    if st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not {os.getuid()}"
    if st.st_mode & 0o022:
        return "writable by others"
    return None


def _step_aside(cpu: int) -> set[int] | None:
    """Move the calling thread off `cpu`; returns its affinity before (None:
    left as it was)."""
    try:
        before = os.sched_getaffinity(0)
    except OSError:
        return None
    others = before - {cpu}
    if not others or others == before:
        return None
    return before if _set_affinity(others) else None


def _set_affinity(cpus: set[int]) -> bool:
    try:
        os.sched_setaffinity(0, cpus)  # 0: the calling thread only
        return True
    except OSError:
        return False


def _libc_getcpu() -> Callable[[], int] | None:
    try:
        return ctypes.CDLL(None).sched_getcpu
    except (OSError, AttributeError):
        return None
