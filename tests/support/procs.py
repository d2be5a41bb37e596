"""Finding a test's marker processes on the host: a submission starts
`sleep <unique duration>` to announce that its code is running, in a sandbox
or not."""

from __future__ import annotations

import os
from pathlib import Path


def pgrep(pattern: str) -> list[str]:
    """Pids whose command line is `pattern` (a `sleep N` here). Not `pgrep
    -f`: reading every process's cmdline waits on each one's memory map, and
    on this VM one being set up in a sandbox can hold that for seconds;
    /proc/PID/comm never waits, and only the matching names are read further."""
    name, _, _ = pattern.partition(" ")
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != name:
                continue
            if Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip().decode() == pattern:
                found.append(pid)
        except OSError:
            continue
    return found


def marker(tag: int = 0) -> str:
    """A `sleep` command line no other test or engineer runs."""
    return f"sleep {os.getpid() % 1000 + 1000}.{tag % 997}"
