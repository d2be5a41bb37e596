"""What the reference solution produces, computed once per assignment version.

Kept in memory (per :class:`ExpectedStore`, owned by the caller) and on disk
under a private cache folder, keyed by a hash of the solution, the tests, the
runtime files, the config and the runner. It holds expected values: the
folder is created 0700 and files 0600, and never bound into a sandbox.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import structlog

from xgrader.assignment import Assignment
from xgrader.config import DEFAULT_RUNNER_DIR

log = structlog.get_logger(__name__)

FORMAT = "xgrader-expected-1"


def default_cache_dir() -> Path:
    """systemd's CacheDirectory= (CACHE_DIRECTORY), else the XDG cache."""
    if os.environ.get("CACHE_DIRECTORY"):
        return Path(os.environ["CACHE_DIRECTORY"].split(":")[0]) / "expected"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xgrader" / "expected"


def fingerprint(assignment: Assignment, runner_dir: Path = DEFAULT_RUNNER_DIR) -> str:
    h = hashlib.sha256(FORMAT.encode())
    parts = list(assignment.fingerprint_parts())
    for side in sorted(Path(runner_dir).rglob("*.py")):
        parts.append((f"runner/{side.relative_to(runner_dir)}", side.read_bytes()))
    for name, data in parts:
        h.update(len(name).to_bytes(4, "big") + name.encode() + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def _runner_signature(runner_dir: Path) -> tuple:
    """(path, mtime, size) of every runner source: a few stat calls, where
    hashing them all again costs a read and a SHA-256 of each."""
    out = []
    stack = [str(runner_dir)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    if e.name != "__pycache__":
                        stack.append(e.path)
                elif e.name.endswith(".py"):
                    st = e.stat(follow_symlinks=False)
                    out.append((e.path, st.st_mtime_ns, st.st_size))
    return tuple(sorted(out))


class ExpectedStore:
    def __init__(self, cache_dir: Path | None = None, runner_dir: Path = DEFAULT_RUNNER_DIR) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.runner_dir = Path(runner_dir)
        self._memory: dict[str, dict[str, Any]] = {}
        # id(assignment) -> (assignment, runner signature, fingerprint). A loaded
        # Assignment holds its files' bytes and never changes (an edited folder
        # is a new object from the registry): its hash is computed once.
        self._keys: dict[int, tuple[Assignment, tuple, str]] = {}

    def key(self, assignment: Assignment) -> str:
        runner = _runner_signature(self.runner_dir)
        hit = self._keys.get(id(assignment))
        if hit is not None and hit[0] is assignment and hit[1] == runner:
            return hit[2]
        key = fingerprint(assignment, self.runner_dir)
        self._keys[id(assignment)] = (assignment, runner, key)
        return key

    def share(self, derived: Assignment, original: Assignment) -> None:
        """Grade `derived` (the same assignment with other time limits: the
        mutants' tighter per-test timeout) with `original`'s expected values
        and test list, instead of computing them again under its limits."""
        self._keys[id(derived)] = (derived, _runner_signature(self.runner_dir), self.key(original))

    def get(self, assignment: Assignment, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        key = self.key(assignment)
        hit = self._memory.get(key)
        if hit is not None:
            return hit
        data = self._read(key)
        if data is None:
            log.info("expected_computing", assignment=assignment.name)
            data = compute()
            self._write(key, data)
        self._memory[key] = data
        return data

    def _path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.json"

    def _read(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None

    def _write(self, key: str, data: dict[str, Any]) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.cache_dir, 0o700)
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-")  # 0600
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self._path(key))
        except OSError as exc:  # a read-only cache costs speed, not correctness
            log.warning("expected_cache_write_failed", error=str(exc))
