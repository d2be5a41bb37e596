"""After every attack on a backend (pytest runs the suite backend by backend:
`sandbox` is a session-scoped parameter; this module sorts last): nothing of
any job is left, and an ordinary submission still grades correctly."""

import glob
import os
import tempfile
import time

import pytest

from tests.attacks.conftest import descendants
from xgrader.report import Outcome

HONEST = "def double(n):\n    return 2 * n\n"


def _leftovers(backend) -> list[str]:
    # A warm pool's idle sandboxes are no job's: they are expected to be there.
    idle = list(getattr(backend, "_idle", ()))
    spare_pids = {p for sb in idle for p in [sb.proc.pid, *[d for d, _ in descendants(sb.proc.pid)]]}
    # A forked warm sandbox's pid is its init; init's parent is the fork server.
    spare_pids |= {_ppid(sb.proc.pid) for sb in idle if type(sb).__name__ == "ForkedSandbox"}
    spare_cgroups = {d.name for sb in idle for d in sb.cgroup.dirs.values()}
    # The fork servers are no job's either (their forked jobs would be).
    servers = getattr(getattr(backend, "inner", backend), "forkservers", None)
    if servers is not None:
        spare_pids |= set(servers.pids())
        spare_cgroups |= set(servers.cgroup_names())
    found = [f"process {pid} ({comm})" for pid, comm in descendants() if pid not in spare_pids]
    inner = getattr(backend, "inner", backend)
    cgroups = getattr(inner, "cgroups", None)
    if cgroups is not None:
        found += [f"cgroup {n}" for n in cgroups.owned_by(os.getpid()) if n not in spare_cgroups]
    if backend.name == "docker":
        from xgrader.backends.docker_backend import OWNER
        found += [f"container {c['Id'][:12]}" for c in
                  backend.api.containers(all=True, filters={"label": [f"{OWNER}={backend.owner}"]})]
    found += [f"temp dir {p}" for p in glob.glob(os.path.join(tempfile.gettempdir(), f"xgrader-*-{os.getpid()}-*"))]
    return found


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return int(fh.read().rsplit(b")", 1)[1].split()[1])


def test_nothing_left_behind(sandbox):
    if hasattr(sandbox, "wait_ready"):
        assert sandbox.wait_ready(timeout=15)  # no start half done while we look
    deadline = time.monotonic() + 10  # removal of the last job's parts may still be under way
    while (left := _leftovers(sandbox)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], left


@pytest.mark.parametrize("kind", ["vault", "vault_io"])
def test_ordinary_submission_still_grades(attack_grader, kind):
    hits = getattr(attack_grader.backend, "hits", None)
    report = attack_grader.grade(kind, HONEST)
    assert report.outcome is Outcome.passed and report.score == 4, report
    wrong = attack_grader.grade(kind, "def double(n):\n    return n * 2 if n > 0 else 0\n")
    assert wrong.score == 3 and wrong.outcome is Outcome.partial, wrong  # only double(-4) is wrong
    if hits is not None:
        assert attack_grader.backend.hits > hits  # the warm path was taken
