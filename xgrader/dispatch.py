"""grader_payload name -> assignment folder, safely.

The name comes from the LMS (student-reachable through a crafted problem or
a replayed request): it is a relative path under the handlers root and must
stay there after resolving symlinks.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import structlog

from xgrader.assignment import CONFIG_FILE, LIBRARY_DIR, Assignment, load_assignment
from xgrader.errors import AssignmentError

log = structlog.get_logger(__name__)

MAX_NAME = 200


def assignment_dir(handlers_root: Path, grader_name: str) -> Path:
    """The folder a grader name denotes, or AssignmentError: rejects empty,
    absolute, `..`, NUL/control characters, and anything whose resolved path
    leaves the resolved root (symlinks included)."""
    name = grader_name.strip() if isinstance(grader_name, str) else ""
    shown = repr(grader_name[:80]) if isinstance(grader_name, str) else "(not a string)"
    if not name:
        raise AssignmentError("the grader payload names no assignment")
    if len(name) > MAX_NAME or any(ord(c) < 32 or c == "\x7f" for c in name):
        raise AssignmentError(f"assignment name {shown} is not allowed")
    if "\\" in name:
        raise AssignmentError(f"assignment name {shown} is not allowed (backslash)")
    rel = PurePosixPath(name)
    if rel.is_absolute() or name.startswith("~"):
        raise AssignmentError(f"assignment name {shown} must be relative to the handlers folder")
    if ".." in rel.parts or "." in name.split("/"):
        raise AssignmentError(f"assignment name {shown} must not contain '..' or '.' segments")
    root = Path(handlers_root).resolve()
    folder = (root / rel).resolve()
    if folder != root and root not in folder.parents:
        raise AssignmentError(f"assignment name {shown} leads outside the handlers folder")
    if folder == root or not (folder / CONFIG_FILE).is_file():
        raise AssignmentError(f"unknown assignment {shown}")
    return folder


ABSENT = -1  # a snapshot's mtime of a path that did not exist (the signatures library)


def _snapshot(folder: Path) -> dict[str, int]:
    """Every folder and file under `folder` with its mtime: edits invalidate
    the cache."""
    found: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in ("__pycache__", ".pytest_cache")]
        for entry in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
            try:
                found[entry] = os.lstat(entry).st_mtime_ns
            except FileNotFoundError:
                continue
    return found


def _unchanged(snapshot: dict[str, int]) -> bool:
    """Whether every path of a snapshot still has its mtime: a file written
    changes its own, a file added, removed or renamed its folder's."""
    for path, mtime in snapshot.items():
        try:
            if os.lstat(path).st_mtime_ns != mtime:
                return False
        except OSError:
            if mtime != ABSENT:
                return False
        else:
            if mtime == ABSENT:
                return False
    return True


def resolve(handlers_root: Path, grader_name: str) -> Assignment:
    """Load the named assignment (no caching)."""
    folder = assignment_dir(handlers_root, grader_name)
    return load_assignment(folder, grader_name.strip(), Path(handlers_root) / LIBRARY_DIR)


class AssignmentRegistry:
    """Per-process cache of loaded assignments keyed by (folder, newest mtime),
    owned by its caller (the daemon, a batch run) rather than a global."""

    def __init__(self, handlers_root: Path) -> None:
        self.handlers_root = Path(handlers_root)
        self._cache: dict[Path, tuple[dict[str, int], Assignment]] = {}

    def get(self, grader_name: str) -> Assignment:
        folder = assignment_dir(self.handlers_root, grader_name)
        hit = self._cache.get(folder)
        # Each path as last seen (an lstat each, no folder listing); else walk and load.
        if hit is not None and _unchanged(hit[0]):
            return hit[1]
        library = self.handlers_root / LIBRARY_DIR
        # The shared signatures library is part of every assignment it serves.
        snapshot = {**_snapshot(folder), **(_snapshot(library) if library.is_dir() else {str(library): ABSENT})}
        assignment = load_assignment(folder, grader_name.strip(), library)
        self._cache[folder] = (snapshot, assignment)
        log.info("assignment_loaded", assignment=assignment.name, kind=assignment.config.kind)
        return assignment

    def names(self) -> list[str]:
        """Every assignment folder under the root (relative names)."""
        root = self.handlers_root.resolve()
        if not root.is_dir():
            return []
        found = []
        for cfg in sorted(root.rglob(CONFIG_FILE)):
            if any(p.startswith(".") for p in cfg.relative_to(root).parts):
                continue
            found.append(cfg.parent.relative_to(root).as_posix())
        return found
