"""Sandbox backend fixture: `backend` parametrised over backend names.

The docker param (marker `docker`) runs against podman's Docker-compatible
socket that scripts/setup-podman.sh starts; `podman_engine` (session) makes
sure it answers, starting it if needed, and FAILS (never skips) otherwise;
it also rebuilds the grading image when sandbox/ changed since the last build."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from xgrader.config import Settings
from xgrader.backends import make_backend

BACKEND_PARAMS = [
    pytest.param("bwrap", id="bwrap"),             # jobs forked by the fork servers
    pytest.param("bwrap_cold", id="bwrap_cold"),   # one bwrap + interpreter per job
    pytest.param("unsafe", id="unsafe"),
    pytest.param("docker", id="docker", marks=pytest.mark.docker),
]

PODMAN_URL = os.environ.get("XGRADER_TEST_DOCKER_URL", "unix:///run/xgrader-podman.sock")
REPO = Path(__file__).resolve().parents[2]


def _engine_answers(url: str) -> bool:
    import docker
    try:
        client = docker.APIClient(base_url=url, version="1.41", timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="session")
def podman_engine() -> str:
    """The Docker API URL of a running engine with the grading image."""
    if not _engine_answers(PODMAN_URL):
        # Idempotent: configures podman, builds images if missing, starts the socket.
        subprocess.run(["bash", str(REPO / "scripts/setup-podman.sh")], check=False, timeout=1800)
        deadline = time.monotonic() + 10
        while not _engine_answers(PODMAN_URL) and time.monotonic() < deadline:
            time.sleep(0.2)
    if not _engine_answers(PODMAN_URL):
        pytest.fail(f"no container engine answers at {PODMAN_URL}: run scripts/setup-podman.sh")
    # The image bakes in sandbox/: rebuild when it changed (a no-op taking ~1 s otherwise).
    build = subprocess.run(["bash", str(REPO / "sandbox/image/build.sh")], capture_output=True, text=True,
                           timeout=900)
    if build.returncode != 0:
        pytest.fail(f"grading image build failed: {build.stderr[-2000:]}")
    return PODMAN_URL


def plain_settings(name: str, **kw) -> Settings:
    """Settings for a non-docker param name (bwrap_cold: no fork server)."""
    if name == "bwrap_cold":
        return Settings(sandbox="bwrap", sandbox_fork_server=False, **kw)
    return Settings(sandbox=name, **kw)


def docker_settings(url: str, **kw) -> Settings:
    return Settings(sandbox="docker", docker_url=url, **kw)


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    if request.param == "docker":
        settings = docker_settings(request.getfixturevalue("podman_engine"))
    else:
        settings = plain_settings(request.param)
    b = make_backend(settings, unsafe_ok=request.param == "unsafe")
    yield b
    b.close()
