"""The two images, built and run with podman (marker `docker`):

- the grading image (sandbox/image/, built by scripts/setup-podman.sh): current
  runner, python3 + pytest, nothing else, non-root;
- the daemon image (Dockerfile, built here by scripts/build-daemon-image.sh
  FROM the locally debootstrapped base): `xgrader --help` as a non-root user.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from xgrader.config import Settings
from xgrader.backends.docker_backend import runner_digest

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
GRADING = Settings().docker_image


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


def test_grading_image_is_current_minimal_and_unprivileged(podman_engine):
    # build.sh (also run by setup and the fixture) must label with runner_digest of this checkout.
    build = subprocess.run(["bash", str(REPO / "sandbox/image/build.sh")], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr
    label = podman("image", "inspect", "--format", '{{index .Labels "xgrader.runner"}}', GRADING)
    assert label.returncode == 0, label.stderr
    runner = runner_digest(REPO / "sandbox")
    assert label.stdout.strip() == runner, "grading image is stale: run sandbox/image/build.sh"
    script = (
        "import os, shutil, importlib.util as u\n"
        "print('uid', os.getuid())\n"
        "print('runner', os.path.isfile('/opt/xgrader/runner.py'), os.path.isfile('/opt/xgrader/pytest_side/launch.py'))\n"
        "print('pytest', u.find_spec('pytest') is not None)\n"
        "print('pip', u.find_spec('pip') is not None)\n"
        "print('tools', [t for t in ('gcc', 'cc', 'curl', 'wget', 'apt-get', 'sudo', 'su') if shutil.which(t)])\n"
    )
    r = podman("run", "--rm", "--network=none", GRADING, "python3", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "uid 65534", "runner True True", "pytest True", "pip False",
        # apt-get/su ship with any Debian base (essential); no compiler, no downloader, no sudo.
        "tools ['apt-get', 'su']",
    ], r.stdout


def test_grading_image_runs_the_runner(podman_engine):
    """The runner answers over its channel in the image as-is (fd channel via a shell pipe)."""
    request = '{"op": "eval", "expr": "6*7", "id": 1}\n{"op": "exit", "id": 2}\n'
    r = subprocess.run(
        ["podman", "run", "--rm", "-i", "--network=none", "-e", "XGRADER_CHANNEL=fd:0,1", GRADING,
         "python3", "-I", "-S", "/opt/xgrader/runner.py"],
        input=request, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert '"id":1' in r.stdout.replace(" ", "") and "42" in r.stdout, r.stdout


@pytest.fixture(scope="module")
def daemon_image(podman_engine):
    """The daemon image, built by the script operators use (FROM the local base, offline)."""
    tag = "xgrader:test"
    build = subprocess.run(["bash", str(REPO / "scripts/build-daemon-image.sh"), tag],
                           capture_output=True, text=True, timeout=900, cwd=REPO)
    assert build.returncode == 0, build.stdout + build.stderr
    yield tag
    podman("rmi", "-f", tag)


@pytest.mark.slow
def test_daemon_image_runs_as_non_root(daemon_image):
    r = podman("run", "--rm", "--network=none", daemon_image, "xgrader", "--help")
    assert r.returncode == 0 and "xqueue-compatible external grader" in r.stdout, r.stderr
    r = podman("run", "--rm", "--network=none", daemon_image, "python3", "-c",
               "import os, shutil, xgrader.backends.docker_backend\n"
               "from xgrader.config import Settings\ns = Settings()\n"
               "print(os.getuid(), (s.runner_dir / 'runner.py').is_file(), s.handlers.is_dir(),\n"
               "      str(s.runner_dir).startswith('/opt/xgrader/venv/'), bool(shutil.which('bwrap')),\n"
               "      sorted(k for k in os.environ if k.startswith('XGRADER_')))")
    # The runner and the examples come from the installed wheel, no XGRADER_* workaround; bwrap is there.
    assert r.returncode == 0 and r.stdout.split() == ["10001", "True", "True", "True", "True", "[]"], \
        r.stdout + r.stderr


@pytest.mark.slow
def test_daemon_in_a_container_grades_through_the_host_engine(daemon_image, podman_engine, tmp_path_factory):
    """The compose layout: the daemon image talks to the host's engine socket and
    shares its job folder (TMPDIR) with the host at the same path. Root inside
    only because this host's socket is root-only (compose uses group_add)."""
    jobs = Path(tempfile.mkdtemp(prefix="xgrader-e2e-", dir="/var/tmp"))
    sock = podman_engine.removeprefix("unix://")
    samples = REPO / "payload_handlers" / "is_prime" / "samples"
    try:
        replies = {}
        for sample in ("correct.py", "wrong_offbyone.py"):
            r = podman("run", "--rm", "--network=none", "--user", "0",
                       "-v", f"{sock}:/run/engine.sock", "-v", f"{jobs}:{jobs}", "-v", f"{samples}:/samples:ro",
                       "-e", f"TMPDIR={jobs}", "-e", "XGRADER_SANDBOX=docker",
                       "-e", "XGRADER_DOCKER_URL=unix:///run/engine.sock",
                       daemon_image, "xgrader", "grade", "--payload", "is_prime", f"/samples/{sample}",
                       timeout=300)
            assert r.returncode == 0, r.stdout + r.stderr
            replies[sample] = json.loads(r.stdout)
        right, wrong = replies["correct.py"], replies["wrong_offbyone.py"]
        assert right["correct"] is True and wrong["correct"] is False, replies
        assert right["score"] > wrong["score"], replies
        # The job folders went with their jobs (the seccomp profile file stays: shared, content-addressed).
        assert [p.name for p in jobs.iterdir() if not p.name.startswith("xgrader-seccomp-")] == []
    finally:
        shutil.rmtree(jobs, ignore_errors=True)
