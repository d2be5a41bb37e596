import json
from types import SimpleNamespace

import requests

from xgrader.metrics import MetricsHooks, start_metrics_server


def test_scrape_and_health_while_hooks_driven():
    hooks = MetricsHooks(stall_seconds=60)
    state = {"ready": (False, "not logged in")}
    srv = start_metrics_server(SimpleNamespace(metrics_port=0), hooks, lambda: state["ready"], host="127.0.0.1")
    base = f"http://127.0.0.1:{srv.port}"
    try:
        assert requests.get(base + "/healthz", timeout=5).status_code == 503
        assert requests.get(base + "/readyz", timeout=5).status_code == 503
        hooks.on_loop_progress()
        hooks.on_pulled("q1", "7")
        hooks.on_graded("q1", "a1", "correct", 1.5)
        hooks.on_queue_length("q1", 4)
        state["ready"] = (True, "ok")
        r = requests.get(base + "/healthz", timeout=5)
        assert r.status_code == 200 and json.loads(r.text)["ok"] is True
        assert requests.get(base + "/readyz", timeout=5).status_code == 200
        text = requests.get(base + "/metrics", timeout=5).text
        assert 'xgrader_submissions_pulled_total{queue="q1"} 1.0' in text
        assert 'xgrader_submissions_graded_total{assignment="a1",outcome="correct",queue="q1"} 1.0' in text
        assert 'xgrader_queue_length{queue="q1"} 4.0' in text
    finally:
        srv.stop()


def test_build_hooks_starts_server_when_port_set():
    import socket
    from xgrader.metrics import build_hooks
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hooks = build_hooks(SimpleNamespace(metrics_port=port))
    try:
        url = f"http://127.0.0.1:{port}/readyz"
        assert requests.get(url, timeout=5).status_code == 503
        hooks.on_logged_in(True)
        assert requests.get(url, timeout=5).status_code == 200
    finally:
        hooks.server.stop()
