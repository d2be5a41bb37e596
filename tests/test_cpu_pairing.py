"""A pytest-kind submission's two sandboxes run on one CPU (their calls go
back and forth): the CPU is held through a lock file per CPU, shared by every
process of the user and released when its holder ends, even by dying."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.grading import GradingKit
from xgrader.backends import make_backend
from xgrader.backends.cpus import CpuPairing
from xgrader.config import Settings
from xgrader.report import Outcome


def test_each_submission_holds_a_cpu_of_its_own(tmp_path: Path) -> None:
    pairing = CpuPairing({0, 1, 2}, tmp_path / "locks")
    pairing._getcpu = lambda: 1                   # the calling thread runs on CPU 1: tried first
    with pairing.hold() as a, pairing.hold() as b, pairing.hold() as c:
        assert (a, b, c) == (1, 2, 0)
        with pairing.hold() as d:
            assert d is None                      # more submissions than CPUs: not pinned
    with pairing.hold() as again:
        assert again == 1                         # released at the end of the block
    pairing._getcpu = lambda: 7                   # a CPU outside the set: from the first
    with pairing.hold() as first:
        assert first == 0
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == ["cpu0.lock", "cpu1.lock", "cpu2.lock"]
    assert ((tmp_path / "locks").stat().st_mode & 0o777) == 0o700


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="stepping aside needs two CPUs")
def test_the_holding_thread_steps_off_the_cpu_it_holds(tmp_path: Path) -> None:
    mine = os.sched_getaffinity(0)
    pairing = CpuPairing(lock_dir=tmp_path / "locks")
    with pairing.hold() as cpu:
        assert cpu in mine
        assert os.sched_getaffinity(0) == mine - {cpu}
    assert os.sched_getaffinity(0) == mine


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to choose from")
def test_the_cpu_the_thread_runs_on_comes_first(tmp_path: Path) -> None:
    mine = os.sched_getaffinity(0)
    last = max(mine)
    pairing = CpuPairing(lock_dir=tmp_path / "locks")
    os.sched_setaffinity(0, {last})
    try:
        with pairing.hold() as cpu:
            assert cpu == last
    finally:
        os.sched_setaffinity(0, mine)


def test_a_lock_file_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    target = tmp_path / "somewhere-else"
    (locks / "cpu0.lock").symlink_to(target)
    pairing = CpuPairing({0, 1}, locks)
    pairing._getcpu = lambda: 0
    with pairing.hold() as cpu:
        assert cpu == 1                           # cpu0's lock is refused, not followed
    assert not target.exists()


def test_a_cpu_held_by_another_process_is_skipped_until_it_dies(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    pairing = CpuPairing({3, 5}, locks)
    pairing._getcpu = lambda: 3
    with pairing.hold():
        pass  # makes the folder
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(locks / 'cpu3.lock')!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pairing.hold() as cpu:
            assert cpu == 5
    finally:
        holder.kill()
        holder.wait()
    with pairing.hold() as cpu:
        assert cpu == 3                           # the kernel dropped the dead holder's lock


def test_nothing_to_pair_on_one_cpu_or_without_a_lock_folder(tmp_path: Path) -> None:
    with CpuPairing({0}, tmp_path / "one").hold() as cpu:
        assert cpu is None
    assert not (tmp_path / "one").exists()
    (tmp_path / "open").mkdir(mode=0o777)
    os.chmod(tmp_path / "open", 0o777)           # anyone could put a symlink in it
    with CpuPairing({0, 1}, tmp_path / "open").hold() as cpu:
        assert cpu is None
    assert list((tmp_path / "open").iterdir()) == []
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with CpuPairing({0, 1}, tmp_path / "link").hold() as cpu:
        assert cpu is None
    assert list((tmp_path / "elsewhere").iterdir()) == []
    (tmp_path / "file").write_text("not a folder")
    unusable = CpuPairing({0, 1}, tmp_path / "file")
    for _ in range(2):  # warned about once, then not tried again
        with unusable.hold() as cpu:
            assert cpu is None
    assert unusable.cpus == []


# -- end to end: where the sandboxes of a graded submission ran -------------------

SOLUTION = "import os\n\ndef cpus():\n    return sorted(os.sched_getaffinity(0))\n"

TESTS = '''
import os
from submission import cpus

HOST_CPUS = %d

def test_same_cpu():
    mine = sorted(os.sched_getaffinity(0))
    assert cpus() == mine and len(mine) == 1, (cpus(), mine)

def test_unpinned():
    assert len(cpus()) == len(os.sched_getaffinity(0)) == HOST_CPUS
'''


def _kit(root: Path, cache: Path, **settings) -> GradingKit:
    backend = make_backend(Settings(sandbox="bwrap", **settings))
    kit = GradingKit(root, backend, cache)
    kit.add("where", {
        "assignment.toml": 'title = "where"\nkind = "pytest"\nmax_points = 2\n'
                           '[[tests]]\npattern = "*"\nvisible = true\n',
        "tests/test_where.py": TESTS % len(os.sched_getaffinity(0)),
        "solution/submission.py": SOLUTION,
    })
    return kit


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pairing needs two CPUs to show")
def test_the_student_and_test_sandboxes_share_one_cpu(tmp_path: Path) -> None:
    kit = _kit(tmp_path / "handlers", tmp_path / "cache")
    try:
        pairing = kit.backend.cpu_pairing = CpuPairing(lock_dir=tmp_path / "locks")  # no other grader's locks
        for _ in range(3):  # the reference run, then the collected session's jobs
            report = kit.grade("where", SOLUTION)
            status = {t.name.split("::")[-1]: t.status.value for t in report.tests}
            assert status["test_same_cpu"] == "passed", [(t.name, t.message) for t in report.tests]
            assert status["test_unpinned"] == "failed"
        with pairing.hold() as a, pairing.hold() as b:
            assert None not in (a, b) and a != b  # released once the submission was graded
    finally:
        kit.backend.close()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pairing needs two CPUs to show")
def test_pairing_off_leaves_every_cpu(tmp_path: Path) -> None:
    kit = _kit(tmp_path / "handlers", tmp_path / "cache", sandbox_pair_cpu=False)
    try:
        assert kit.backend.cpu_pairing is None
        report = kit.grade("where", SOLUTION)
        status = {t.name.split("::")[-1]: t.status.value for t in report.tests}
        assert status == {"test_same_cpu": "failed", "test_unpinned": "passed"}, \
            [(t.name, t.message) for t in report.tests]
        assert report.outcome is not Outcome.passed
    finally:
        kit.backend.close()
