"""Grader replicas in their own containers share one host job folder
(deploy/compose.yaml: the engine needs the same path inside and out). Each
replica's periodic clean-up removes job folders of processes that are gone,
judged in its own pid namespace: it must leave the other replicas' folders
alone (their pids mean nothing here), or their jobs lose their files and
channel mid-grade ("the sandbox exited before connecting", "no answer")."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from xgrader.backends import docker_backend
from xgrader.backends.base import Limits, SandboxJob
from xgrader.backends.docker_backend import TMP_PREFIX, DockerBackend
from xgrader.config import Settings

pytestmark = pytest.mark.docker


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.fixture
def short_tmp(monkeypatch):
    """TMPDIR short enough for the job's channel socket path (108 bytes)."""
    import shutil

    path = Path(tempfile.mkdtemp(prefix="xgj-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_clean_up_leaves_another_replicas_job_folders(short_tmp, monkeypatch, podman_engine):
    tmp_path = short_tmp
    backend = DockerBackend(Settings(sandbox="docker", docker_url=podman_engine))
    try:
        real_host = socket.gethostname()
        pid = dead_pid()   # gone here; as a pid of the other replica's namespace it may be grading
        monkeypatch.setattr(socket, "gethostname", lambda: "grader-replica-2")
        theirs = tmp_path / f"{TMP_PREFIX}{pid}-job-b{docker_backend._host_suffix()}"
        monkeypatch.setattr(socket, "gethostname", lambda: real_host)
        ours_dead = tmp_path / f"{TMP_PREFIX}{pid}-job-a{docker_backend._host_suffix()}"
        unmarked_dead = tmp_path / f"{TMP_PREFIX}{pid}-job-c"      # named before folders said their host
        for folder in (theirs, ours_dead, unmarked_dead):
            folder.mkdir()
        folder, listener = backend._prepare(SandboxJob(argv=["true"], limits=Limits(), label="job", channel=True))
        listener.close()
        assert folder.parent == tmp_path and folder.name.endswith(docker_backend._host_suffix())
        assert folder.name.startswith(f"{TMP_PREFIX}{os.getpid()}-job-")

        backend._cleanup_host()

        left = {p.name for p in tmp_path.iterdir()}
        assert theirs.name in left and folder.name in left        # the other replica's and our live job's
        assert ours_dead.name not in left and unmarked_dead.name not in left
    finally:
        backend.close()


def test_folder_names_differ_by_host(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "a")
    a = docker_backend._host_suffix()
    monkeypatch.setattr(socket, "gethostname", lambda: "b")
    assert a != docker_backend._host_suffix() and a.startswith(".h") and len(a) == 8 and Path("x" + a).suffix == a
