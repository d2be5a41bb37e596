"""The aftermath of the attacks on one backend, checked when the session-scoped
`sandbox` fixture of that backend is torn down (tests/attacks/conftest.py):
after every test that used it, in whatever order or selection they ran. An
ordinary submission still grades correctly, and nothing of any job is left
(process, cgroup, container, temp dir). A failure shows as an error at the
teardown of the last test that used the backend."""

import glob
import os
import tempfile
import time

from tests.attacks.conftest import descendants
from xgrader.report import Outcome

HONEST = "def double(n):\n    return 2 * n\n"


def leftovers(backend) -> list[str]:
    if getattr(backend, "param_name", "").startswith("bwrap_user"):
        return _user_leftovers(backend)
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


def _user_leftovers(backend) -> list[str]:
    """The non-root configuration: what the user's backend process finds
    below itself, and any process of the user outside its tree that was
    not there before the suite (reparented away, say)."""
    from xgrader.daemon.proctree import descendants as tree
    found = backend.leftovers()
    helper = {backend.pid, *tree(backend.pid), *backend.author.engine_pids()}
    found += [f"stray process {pid} ({name}) of {backend.author.name}"
              for pid, name in backend.author.processes().items() if pid not in helper and pid not in backend.baseline]
    return found


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return int(fh.read().rsplit(b")", 1)[1].split()[1])


def check(backend, grader) -> None:
    """Raise AssertionError unless the backend still grades an ordinary
    submission (on the warm path too) and nothing of any job is left."""
    for kind in ("vault", "vault_io"):
        hits = getattr(backend, "hits", None)
        report = grader.grade(kind, HONEST)
        assert report.outcome is Outcome.passed and report.score == 4, report
        wrong = grader.grade(kind, "def double(n):\n    return n * 2 if n > 0 else 0\n")
        assert wrong.score == 3 and wrong.outcome is Outcome.partial, wrong  # only double(-4) is wrong
        if hits is not None:
            assert backend.hits > hits  # the warm path was taken
    if hasattr(backend, "wait_ready"):
        assert backend.wait_ready(timeout=15)  # no start half done while we look
    deadline = time.monotonic() + 10  # removal of the last job's parts may still be under way
    while (left := leftovers(backend)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"{backend.param_name}: left behind after the attacks: {left}"
