"""Killing a job's whole process tree, including descendants that left its
process group (setsid, as bwrap --new-session does)."""

from __future__ import annotations

import os
import signal
from collections import defaultdict


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # comm may hold spaces and parens: fields after the last ')' are fixed.
        rest = stat[stat.rfind(b")") + 2:].split()
        kids[int(rest[1])].append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    kids = _children_map()
    out: list[int] = []
    stack = list(kids.get(pid, ()))
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, ()))
    return out


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(pid: int) -> None:
    """SIGKILL `pid`, its process group and every descendant.

    Stop first, then kill: a stopped tree cannot fork away, and descendants
    stay linked to their parents (a killed parent would orphan them to init,
    losing the link we find them by)."""
    _signal_group(pid, signal.SIGSTOP)
    seen: set[int] = set()
    for _ in range(20):  # re-scan until the frozen tree stops growing
        found = set(descendants(pid)) - seen
        if not found:
            break
        for p in found:
            _signal(p, signal.SIGSTOP)
        seen |= found
    _signal_group(pid, signal.SIGKILL)
    for p in seen:
        _signal(p, signal.SIGKILL)
        try:
            _signal_group(os.getpgid(p), signal.SIGKILL) if os.getpgid(p) != os.getpgid(0) else None
        except (ProcessLookupError, PermissionError):
            pass
    _signal(pid, signal.SIGKILL)
