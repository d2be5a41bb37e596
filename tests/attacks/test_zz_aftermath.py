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
    found = [f"process {pid} ({comm})" for pid, comm in descendants()]
    inner = getattr(backend, "inner", backend)
    cgroups = getattr(inner, "cgroups", None)
    if cgroups is not None:
        found += [f"cgroup {n}" for n in cgroups.owned_by(os.getpid())]
    if backend.name == "docker":
        from xgrader.sandbox.docker_backend import OWNER
        found += [f"container {c['Id'][:12]}" for c in
                  backend.api.containers(all=True, filters={"label": [f"{OWNER}={backend.owner}"]})]
    found += [f"temp dir {p}" for p in glob.glob(os.path.join(tempfile.gettempdir(), f"xgrader-*-{os.getpid()}-*"))]
    return found


def test_nothing_left_behind(sandbox):
    deadline = time.monotonic() + 10  # removal of the last job's parts may still be under way
    while (left := _leftovers(sandbox)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], left


@pytest.mark.parametrize("kind", ["vault", "vault_io"])
def test_ordinary_submission_still_grades(attack_grader, kind):
    report = attack_grader.grade(kind, HONEST)
    assert report.outcome is Outcome.passed and report.score == 4, report
    wrong = attack_grader.grade(kind, "def double(n):\n    return n * 2 if n > 0 else 0\n")
    assert wrong.score == 3 and wrong.outcome is Outcome.partial, wrong  # only double(-4) is wrong
