"""The aftermath check itself (aftermath.py, run at each backend's teardown)
sees what it must: a process left by a job would fail it."""

import subprocess

from tests.attacks import aftermath
from tests.attacks.conftest import is_user


def test_the_leftover_check_sees_a_stray_process(sandbox):
    # The non-root configuration: a process of the unprivileged user, outside its backend's tree.
    argv = sandbox.author.command("sleep", "60") if is_user(sandbox) else ["sleep", "60"]
    stray = subprocess.Popen(argv)
    try:
        assert any(f"process {stray.pid} (sleep)" in x for x in aftermath.leftovers(sandbox))
    finally:
        stray.kill()
        stray.wait()
    assert not [x for x in aftermath.leftovers(sandbox) if f"process {stray.pid} " in x]
