"""One verdict classification for every backend.

A backend gathers what it saw of a finished job (the host's own kills, the
kernel's or the engine's memory events, the exit signal, CPU used) and
:func:`classify` turns it into a :class:`Verdict`, with one precedence:

1. ``output``: the host saw more than ``output_bytes`` and killed the job;
2. ``cpu_time``: the host measured the job over ``cpu_s`` and killed it, or
   the job died of a signal after using more than ``cpu_s``;
3. ``memory``: a process was killed by the memory limit (the cgroup's OOM
   killer, the engine's ``OOMKilled``, the host's job-wide memory sampling);
4. ``wall_time``: the wall clock ran out;
5. ``sandbox_error``: the result could not be collected (an engine failure);
6. ``killed``: the job was killed from elsewhere and left no final state;
7. ``cpu_time``: SIGXCPU, or SIGKILL with CPU use near ``cpu_s`` (the
   RLIMIT_CPU hard limit);
8. ``memory``: without a job-wide memory limit, the job failed while its
   largest process had reached the per-process cap (RLIMIT_DATA);
9. ``killed``: any other signal;
10. ``ok``: it exited by itself, whatever its exit status.

What the host decided itself (1, 2) comes first: it is certain, while a
signal may be the consequence of a limit (a SIGKILL is what both the OOM
killer and RLIMIT_CPU's hard limit send).
"""

from __future__ import annotations

import signal as _signal

from xgrader.backends.base import Limits, Verdict

# A SIGKILL with at least this share of cpu_s used is RLIMIT_CPU's hard limit.
CPU_NEAR = 0.9
# Without a job-wide memory limit: a failed job whose largest process used at
# least this share of memory_mb stopped at its per-process cap.
MEMORY_NEAR = 0.9


def classify(limits: Limits, *, signal: int | None = None, exit_code: int | None = None,
             cpu_s: float | None = None, over_output: bool = False, over_cpu: bool = False,
             oom: bool = False, timed_out: bool = False, error: str | None = None,
             vanished: bool = False, largest_process_mb: float | None = None) -> Verdict:
    """The verdict of a finished job (see the module docstring for the order).
    `largest_process_mb` is given only where memory is bounded per process
    (rlimit mode): the peak resident size of the job's largest process."""
    if over_output:
        return Verdict.output
    if over_cpu or (signal is not None and cpu_s is not None and cpu_s > limits.cpu_s):
        return Verdict.cpu_time
    if oom:
        return Verdict.memory
    if timed_out:
        return Verdict.wall_time
    if error is not None:
        return Verdict.sandbox_error
    if vanished:
        return Verdict.killed
    if signal == _signal.SIGXCPU or (signal == _signal.SIGKILL and cpu_s is not None
                                     and cpu_s >= CPU_NEAR * limits.cpu_s):
        return Verdict.cpu_time
    failed = signal is not None or bool(exit_code)
    if failed and largest_process_mb is not None and largest_process_mb >= MEMORY_NEAR * limits.memory_mb:
        return Verdict.memory
    if signal is not None:
        return Verdict.killed
    return Verdict.ok
