"""The aftermath check itself (aftermath.py, run at each backend's teardown)
sees what it must: a process left by a job would fail it."""

import subprocess

from tests.attacks import aftermath


def test_the_leftover_check_sees_a_stray_process(sandbox):
    stray = subprocess.Popen(["sleep", "60"])
    try:
        assert f"process {stray.pid} (sleep)" in aftermath.leftovers(sandbox)
    finally:
        stray.kill()
        stray.wait()
    assert not [x for x in aftermath.leftovers(sandbox) if x.startswith(f"process {stray.pid} ")]
