"""Logging of the course-staff commands (logs.configure_cli): a clean run prints
nothing, a real warning prints once as one plain line, -v prints every step;
and a fork server's clean exit is not a warning."""

from __future__ import annotations

import logging
import signal

import pytest
import structlog

from xgrader.backends import make_backend
from xgrader.config import Settings
from xgrader.logs import configure_cli, unconfigure


@pytest.fixture
def quiet(capsys):
    configure_cli(verbose=False, covered=("shown_by_the_command",))
    yield capsys
    unconfigure()


def test_quiet_shows_each_warning_once_as_a_plain_line(quiet):
    log = structlog.get_logger("t")
    log.info("grading_step", n=1)
    log.debug("detail")
    log.warning("docker_image_stale", image="xgrader-grader:latest", fix="sandbox/image/build.sh")
    log.warning("docker_image_stale", image="xgrader-grader:latest", fix="sandbox/image/build.sh")
    log.error("sandbox_broke", error="no such file", password="hunter2")
    log.warning("shown_by_the_command", tests=["a"])
    logging.getLogger("urllib3.connectionpool").warning("Connection pool is full")
    logging.getLogger("urllib3.connectionpool").info("chatty")
    assert quiet.readouterr().err.splitlines() == [
        "xgrader: warning: docker_image_stale (image=xgrader-grader:latest fix=sandbox/image/build.sh)",
        "xgrader: error: sandbox_broke (error='no such file' password=***)",
        "xgrader: warning: Connection pool is full",
    ]


def test_verbose_logs_every_step(capsys):
    configure_cli(verbose=True)
    try:
        structlog.get_logger("t").debug("grading_step", n=1)
        err = capsys.readouterr().err
    finally:
        unconfigure()
    assert "grading_step" in err and "n=1" in err and "[debug" in err


def _servers(backend):
    backend.prepare()
    servers = list(backend.forkservers.servers.values())
    assert servers and all(s.proc is not None and s.proc.poll() is None for s in servers)
    return servers


def test_a_fork_server_clean_exit_is_not_a_warning():
    backend = make_backend(Settings(sandbox="bwrap"))
    for server in _servers(backend):
        # What stop() does first; the server sees its socket close and exits 0
        # before stop() looks (the race that logged a warning for every command).
        server.running.sock.close()
        server.running.sock = None
        assert server.proc.wait(timeout=10) == 0
    with structlog.testing.capture_logs() as logged:
        backend.close()
    assert [e for e in logged if e["event"] == "fork_server_exited"] == []


def test_a_fork_server_that_died_is_still_a_warning():
    backend = make_backend(Settings(sandbox="bwrap"))
    servers = _servers(backend)
    for server in servers:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
    with structlog.testing.capture_logs() as logged:
        backend.close()
    exited = [e for e in logged if e["event"] == "fork_server_exited"]
    assert len(exited) == len(servers) and all(e["log_level"] == "warning" and e["code"] != 0 for e in exited)
