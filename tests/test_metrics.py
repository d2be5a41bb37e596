"""Metrics hooks, the /metrics /healthz /readyz server, child-event replay
through a real fork, and the instrumented sandbox backend on real bwrap."""

import json
import socket
import time
from types import SimpleNamespace

import pytest
import requests
from prometheus_client import generate_latest

from xgrader.config import Settings
from xgrader.daemon.messages import ChildReport, Reporter
from xgrader.daemon.supervisor import Supervisor
from xgrader.hooks import HookChain
from xgrader.metrics import InstrumentedBackend, MetricsHooks, build_hooks, metric_names, start_metrics_server
from xgrader.backends import SandboxError, SandboxJob, make_backend


def scrape(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def test_scrape_and_health_while_hooks_driven():
    hooks = MetricsHooks(stall_seconds=60)
    srv = start_metrics_server(SimpleNamespace(metrics_port=0), hooks, hooks.readiness)
    base = f"http://127.0.0.1:{srv.port}"
    try:
        assert requests.get(base + "/healthz", timeout=5).status_code == 503
        r = requests.get(base + "/readyz", timeout=5)
        assert r.status_code == 503 and "not logged in" in r.json()["detail"]
        hooks.on_loop_progress()
        hooks.on_pulled("q1", "7")
        hooks.on_graded("q1", "a1", "passed", 1.5)
        hooks.on_queue_length("q1", 4)
        hooks.on_logged_in(True)
        r = requests.get(base + "/readyz", timeout=5)
        assert r.status_code == 503 and "sandbox backend not checked" in r.json()["detail"]
        hooks.on_backend_ready(False, "bwrap cannot start")
        assert "bwrap cannot start" in requests.get(base + "/readyz", timeout=5).json()["detail"]
        hooks.on_backend_ready(True)
        r = requests.get(base + "/healthz", timeout=5)
        assert r.status_code == 200 and json.loads(r.text)["ok"] is True
        assert requests.get(base + "/readyz", timeout=5).status_code == 200
        text = scrape(srv.port)
        assert 'xgrader_submissions_pulled_total{queue="q1"} 1.0' in text
        assert 'xgrader_submissions_graded_total{assignment="a1",outcome="passed",queue="q1"} 1.0' in text
        assert 'xgrader_queue_length{queue="q1"} 4.0' in text
        assert 'xgrader_build_info{version=' in text
        assert requests.get(base + "/nope", timeout=5).status_code == 404
    finally:
        srv.stop()


def test_healthz_fails_when_loop_stalls():
    hooks = MetricsHooks(stall_seconds=0.05)
    hooks.on_loop_progress()
    assert hooks.liveness()[0] is True
    time.sleep(0.1)
    ok, why = hooks.liveness()
    assert not ok and "stalled" in why


def test_build_hooks_binds_metrics_host_and_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hooks = build_hooks(Settings(metrics_port=port, metrics_host="127.0.0.1"))
    try:
        assert (hooks.server.host, hooks.server.port) == ("127.0.0.1", port)
        url = f"http://127.0.0.1:{port}/readyz"
        assert requests.get(url, timeout=5).status_code == 503
        hooks.on_logged_in(True)
        hooks.on_backend_ready(True)
        assert requests.get(url, timeout=5).status_code == 200
    finally:
        hooks.server.stop()


def test_hooks_called_in_a_forked_child_reach_the_parent_registry():
    """The daemon's children die with their memory: their hook calls travel
    in the report and are replayed; without that the counters would not move."""
    metrics = MetricsHooks()
    chain = HookChain(metrics)

    def job(reporter: Reporter) -> None:
        chain.on_client_error("timeout")      # e.g. fetch_files timed out once
        chain.on_relogin()
        chain.on_sandbox_failure("bwrap", "start")
        chain.on_hint("delivered", 0.5, tokens=120)
        reporter.report(ChildReport(outcome="posted", events=chain.take_child_events()))

    sup = Supervisor()
    sup.spawn(job, timeout=10, label="t")
    done = sup.wait_all(timeout=10)
    assert done and done[0].report is not None
    # Nothing reached the parent's registry directly from the child...
    assert metrics.client_err.labels("timeout")._value.get() == 0
    chain.replay(done[0].report.events)
    text = generate_latest(metrics.registry).decode()
    assert 'xgrader_queue_client_errors_total{kind="timeout"} 1.0' in text
    assert "xgrader_relogins_total 1.0" in text
    assert 'xgrader_sandbox_failures_total{backend="bwrap",kind="start"} 1.0' in text
    assert 'xgrader_hints_total{outcome="delivered"} 1.0' in text
    assert "xgrader_hint_tokens_total 120.0" in text


def test_replay_skips_garbage_from_a_child():
    metrics = MetricsHooks()
    chain = HookChain(metrics)
    chain.replay([["__init__", [], {}], ["on_pulled", "x"], "junk", ["on_relogin", [], {}]])
    assert metrics.relogins._value.get() == 1


def test_instrumented_backend_on_real_bwrap():
    metrics = MetricsHooks()
    inner = make_backend(Settings(sandbox="bwrap"))
    backend = InstrumentedBackend(inner, metrics, queue="q1")
    try:
        result = backend.run(SandboxJob(argv=["/usr/bin/python3", "-c", "print(6*7)"]))
        assert result.stdout.strip() == "42"
        hist = metrics.phase_seconds.labels("q1", "sandbox_start")
        assert hist._sum.get() > 0
        with pytest.raises(SandboxError):
            backend.start(SandboxJob(argv=["x"], files={"../escape": b""}))
        assert metrics.sandbox_fail.labels("bwrap", "start")._value.get() == 1
    finally:
        backend.close()


def test_metric_names_cover_the_exposition():
    metrics = MetricsHooks()
    metrics.on_pulled("q", "1")
    names = metric_names(metrics.registry)
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line and not line.startswith("#"):
            assert line.split("{")[0].split(" ")[0] in names


def test_assignment_label_cardinality_is_bounded(monkeypatch):
    import xgrader.metrics as m
    monkeypatch.setattr(m, "MAX_ASSIGNMENT_LABELS", 3)
    metrics = MetricsHooks()
    for i in range(6):
        metrics.on_graded("q", f"a{i}" + "x" * 200, "passed", 0.1)
    metrics.on_graded("q", "a0" + "x" * 200, "failed", 0.1)   # an already-seen name keeps its label
    text = generate_latest(metrics.registry).decode()
    graded = [line for line in text.splitlines() if line.startswith("xgrader_submissions_graded_total")]
    assert len(graded) == 5, graded  # a0 passed, a0 failed, a1, a2, other
    assert 'assignment="other",outcome="passed",queue="q"} 3.0' in text
    assert all(len(line) < 200 for line in graded)
