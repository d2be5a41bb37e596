"""Prometheus metrics (own registry) as a Hooks implementation, plus the
/metrics, /healthz, /readyz HTTP server. The daemon's parent process calls
the hooks (children report back), so an in-process registry is correct."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

import structlog
from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, Info,
                               generate_latest, CONTENT_TYPE_LATEST)
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from xgrader.hooks import Hooks

log = structlog.get_logger(__name__)


class MetricsHooks(Hooks):
    def __init__(self, registry: CollectorRegistry | None = None,
                 stall_seconds: float = 120.0) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.stall_seconds = stall_seconds
        self.last_progress: float | None = None
        self.logged_in = False
        self.pulled = Counter("xgrader_submissions_pulled", "Submissions pulled", ["queue"], registry=r)
        self.graded = Counter("xgrader_submissions_graded", "Submissions graded",
                              ["queue", "assignment", "outcome"], registry=r)
        self.grade_seconds = Histogram("xgrader_grade_seconds", "Grading time", ["queue", "assignment"], registry=r)
        self.phase_seconds = Histogram("xgrader_phase_seconds", "Time per phase", ["queue", "phase"], registry=r)
        self.posted = Counter("xgrader_results_posted", "Result posts", ["queue", "accepted", "reason"], registry=r)
        self.infra = Counter("xgrader_infra_failures", "Infrastructure failures", ["queue", "kind"], registry=r)
        self.sandbox_fail = Counter("xgrader_sandbox_failures", "Sandbox failures", ["backend", "kind"], registry=r)
        self.client_err = Counter("xgrader_queue_client_errors", "Queue client errors", ["kind"], registry=r)
        self.relogins = Counter("xgrader_relogins", "Re-logins", registry=r)
        self.queue_len = Gauge("xgrader_queue_length", "Queue length", ["queue"], registry=r)
        self.in_flight = Gauge("xgrader_in_flight", "Jobs in flight", ["queue"], registry=r)
        self.hint_seconds = Histogram("xgrader_hint_seconds", "Hint latency", ["outcome"], registry=r)
        self.hints = Counter("xgrader_hints", "Hints by outcome", ["outcome"], registry=r)
        self.hint_tokens = Counter("xgrader_hint_tokens", "LLM tokens used", registry=r)
        try:
            from importlib.metadata import version
            ver = version("xgrader")
        except Exception:
            ver = "unknown"
        Info("xgrader_build", "Build info", registry=r).info({"version": ver})

    def on_pulled(self, queue, submission_id): self.pulled.labels(queue).inc()
    def on_graded(self, queue, assignment, outcome, seconds):
        self.graded.labels(queue, assignment, outcome).inc()
        self.grade_seconds.labels(queue, assignment).observe(seconds)
    def on_phase(self, queue, phase, seconds): self.phase_seconds.labels(queue, phase).observe(seconds)
    def on_posted(self, queue, accepted, reason=""): self.posted.labels(queue, str(accepted).lower(), reason).inc()
    def on_infra_failure(self, queue, kind): self.infra.labels(queue, kind).inc()
    def on_sandbox_failure(self, backend, kind): self.sandbox_fail.labels(backend, kind).inc()
    def on_client_error(self, kind): self.client_err.labels(kind).inc()
    def on_relogin(self): self.relogins.inc()
    def on_queue_length(self, queue, length): self.queue_len.labels(queue).set(length)
    def on_in_flight(self, queue, count): self.in_flight.labels(queue).set(count)
    def on_loop_progress(self): self.last_progress = time.monotonic()
    def on_logged_in(self, ok): self.logged_in = ok
    def on_hint(self, outcome, seconds, tokens=0):
        self.hints.labels(outcome).inc()
        self.hint_seconds.labels(outcome).observe(seconds)
        self.hint_tokens.inc(tokens)

    def liveness(self) -> tuple[bool, str]:
        if self.last_progress is None:
            return False, "pull loop has not started"
        age = time.monotonic() - self.last_progress
        if age > self.stall_seconds:
            return False, f"pull loop stalled {age:.0f}s"
        return True, "ok"


def build_hooks(settings: Any) -> MetricsHooks:
    """Called by the daemon's wiring. The daemon does not start the HTTP
    server itself, so do it here when metrics_port is set; readiness is
    'logged in to the queue' as reported through on_logged_in."""
    hooks = MetricsHooks()
    if getattr(settings, "metrics_port", None):
        hooks.server = start_metrics_server(
            settings, hooks, lambda: (hooks.logged_in, "ok" if hooks.logged_in else "not logged in"))
    return hooks


class MetricsServer:
    def __init__(self, host: str, port: int, hooks: MetricsHooks,
                 readiness: Callable[[], tuple[bool, str]]) -> None:
        self.hooks, self.readiness = hooks, readiness
        self._srv = make_server(host, port, self._app, threaded=True)
        self.port = self._srv.server_port
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True, name="metrics")
        self._thread.start()

    def _app(self, environ, start_response):
        req = Request(environ)
        if req.path == "/metrics":
            resp = Response(generate_latest(self.hooks.registry), content_type=CONTENT_TYPE_LATEST)
        elif req.path in ("/healthz", "/readyz"):
            check = self.hooks.liveness if req.path == "/healthz" else self.readiness
            try:
                ok, why = check()
            except Exception as exc:  # a broken check means not healthy, not a 500
                ok, why = False, f"check failed: {exc}"
            resp = Response(json.dumps({"ok": ok, "detail": why}), status=200 if ok else 503,
                            content_type="application/json")
        else:
            resp = Response("not found", status=404)
        return resp(environ, start_response)

    def stop(self) -> None:
        self._srv.shutdown()
        self._thread.join(timeout=5)


def start_metrics_server(settings: Any, hooks: MetricsHooks,
                         readiness: Callable[[], tuple[bool, str]],
                         host: str = "0.0.0.0") -> MetricsServer:
    srv = MetricsServer(host, int(settings.metrics_port or 0), hooks, readiness)
    log.info("metrics_server_started", port=srv.port)
    return srv
