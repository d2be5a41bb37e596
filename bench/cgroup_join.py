"""How long a new process takes to join a cgroup on this host, by join file
and by the time since the previous join.

    python -m bench.cgroup_join            # 20 joins per row

Every sandboxed job's first process joins its cgroup. Writing `cgroup.procs`
takes the kernel's global threadgroup lock, whose write side waits for an
RCU grace period unless another migration ran within the last one, so a
join costs ~0.1 ms when joins are close together and 8-20 ms of wall time
when they are ~30 ms or more apart (no CPU: the process just waits). On
cgroup v1 xgrader writes `0` to the `tasks` file instead, which moves only
the writing thread and takes no such lock (docs/performance.md). Hosts whose
cgroup hierarchy is mounted with `favordynmods` show no wait on either file
(docs/operators.md). Needs root; creates and removes `xgbench-join-*`
cgroups under the first writable hierarchy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path


def hierarchy() -> tuple[Path, list[str]]:
    """(a writable hierarchy, the join files it offers)."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return root, ["cgroup.procs"]  # v2: `tasks` does not exist; cgroup.threads only in threaded trees
    for name in ("pids", "cpu", "memory", "cpuacct"):
        if os.access(root / name, os.W_OK):
            return root / name, ["cgroup.procs", "tasks"]
    raise SystemExit("no writable cgroup hierarchy (run as root)")


def joins(base: Path, join_file: str, gap_s: float, n: int) -> list[float]:
    """Milliseconds each of `n` new processes took to write "0" to
    `join_file` of a fresh cgroup, `gap_s` apart."""
    out = []
    for i in range(n):
        d = base / f"xgbench-join-{os.getpid()}-{i}"
        d.mkdir()
        fd = os.open(d / join_file, os.O_WRONLY)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            start = time.perf_counter()
            os.write(fd, b"0")
            os.write(w, repr((time.perf_counter() - start) * 1000).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        out.append(float(os.read(r, 64)))
        for x in (fd, r, w):
            os.close(x)
        d.rmdir()
        time.sleep(gap_s)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--joins", type=int, default=20, help="joins per row (default 20)")
    args = ap.parse_args(argv)
    base, files = hierarchy()
    print(f"cgroup joins under {base}, {args.joins} per row (median and max, ms of wall time)")
    print(f"{'join file':<14} {'gap':>7} {'median':>8} {'max':>8}")
    for join_file in files:
        for gap_ms in (0, 20, 50, 200):
            ms = joins(base, join_file, gap_ms / 1000, args.joins)
            print(f"{join_file:<14} {gap_ms:>5}ms {statistics.median(ms):>8.2f} {max(ms):>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
