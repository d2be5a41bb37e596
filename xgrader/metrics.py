"""Prometheus metrics (own registry) as a Hooks implementation, the
/metrics, /healthz, /readyz HTTP server, and :class:`InstrumentedBackend`
(sandbox start latency and failures as hooks).

Grading happens in forked children whose memory dies with them: the
children's hook calls are buffered by :class:`xgrader.hooks.HookChain` and
replayed in the parent (daemon or push server), so this in-process registry
sees every submission."""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from xgrader.backends.base import Backend, RunningSandbox, SandboxError, SandboxJob, SandboxResult, Verdict

import structlog
from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, Info,
                               generate_latest, CONTENT_TYPE_LATEST)
from werkzeug.wrappers import Request, Response

from xgrader.hooks import Hooks
from xgrader.wsgi_server import WSGIServer

if TYPE_CHECKING:
    from xgrader.config import Settings

log = structlog.get_logger(__name__)


MAX_ASSIGNMENT_LABELS = 500   # distinct assignment label values; later ones count as "other"
MAX_LABEL_CHARS = 80

PHASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
GRADE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class MetricsHooks(Hooks):
    """Every metric xgrader exports. Names are listed in :data:`METRIC_NAMES`
    (the deploy/ alert rules and dashboard are checked against them)."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 stall_seconds: float = 120.0) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.stall_seconds = stall_seconds
        self.last_progress: float | None = None
        self.logged_in = False
        # None until the first check: readiness needs a positive answer.
        self.backend_ok: tuple[bool, str] | None = None
        self.requires_login = True  # push mode has no queue session
        self.requires_loop = True   # push mode has no pull loop
        # The assignment name comes from the problem's grader_payload: bound
        # the label's cardinality so a broken course cannot blow up the TSDB.
        self._assignments: set[str] = set()
        self._labels_lock = threading.Lock()
        self.pulled = Counter("xgrader_submissions_pulled", "Submissions pulled", ["queue"], registry=r)
        self.graded = Counter("xgrader_submissions_graded", "Submissions graded",
                              ["queue", "assignment", "outcome"], registry=r)
        self.grade_seconds = Histogram("xgrader_grade_seconds", "Wall time from fork to report, per submission",
                                       ["queue", "assignment"], buckets=GRADE_BUCKETS, registry=r)
        self.phase_seconds = Histogram(
            "xgrader_phase_seconds", "Time per phase: fetch, sandbox_start, run, grade, post",
            ["queue", "phase"], buckets=PHASE_BUCKETS, registry=r)
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
        self.ledger = Counter("xgrader_ledger_records", "Attempts recorded in the ledger, by outcome "
                              "(error: the store was unusable; the result was still posted)", ["outcome"], registry=r)
        self.ledger_seconds = Histogram("xgrader_ledger_record_seconds", "Time to record one attempt",
                                        buckets=PHASE_BUCKETS, registry=r)
        self.push_requests = Counter("xgrader_push_requests", "Push-mode HTTP requests by status code",
                                     ["status"], registry=r)
        # Queue state and scaling signals that do not need get_queuelen/.
        self.login_detail = ""
        self.unknown_queues: dict[str, str] = {}   # queue -> the server's answer (readiness)
        self.queue_served = Gauge("xgrader_queue_served", "1 while the queue is being served (logged in, "
                                  "known to the server, sandbox backend ready)", ["queue"], registry=r)
        self.pulls = Counter("xgrader_pulls", "get_submission calls by result: work, empty, in_flight, "
                             "cached, poison, error", ["queue", "result"], registry=r)
        self.busy = Counter("xgrader_slot_busy_seconds", "Slot-seconds spent grading; rate() = busy slots",
                            ["queue"], registry=r)
        self.slots = Gauge("xgrader_slots", "Grading slots of this replica", ["queue"], registry=r)
        self.reposted = Counter("xgrader_results_reposted", "Known results posted again for a re-served "
                                "submission, without grading again", ["queue"], registry=r)
        self.put_failures = Counter("xgrader_put_result_failures", "put_result without an xqueue answer, by "
                                    "HTTP status, connection or timeout", ["queue", "status"], registry=r)
        self.poison = Counter("xgrader_poison_submissions", "Submissions answered 'could not be graded' "
                              "after grading failures, by the failure counted most", ["queue", "reason"],
                              registry=r)
        try:
            from importlib.metadata import version
            ver = version("xgrader")
        except Exception:
            ver = "unknown"
        Info("xgrader_build", "Build info", registry=r).info({"version": ver})

    def on_pulled(self, queue, submission_id): self.pulled.labels(queue).inc()
    def assignment_label(self, assignment: str) -> str:
        name = str(assignment)[:MAX_LABEL_CHARS]
        with self._labels_lock:
            if name in self._assignments:
                return name
            if len(self._assignments) >= MAX_ASSIGNMENT_LABELS:
                return "other"
            self._assignments.add(name)
            return name

    def on_graded(self, queue, assignment, outcome, seconds):
        assignment = self.assignment_label(assignment)
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
    def on_logged_in(self, ok, detail=""):
        self.logged_in = bool(ok)
        self.login_detail = "" if ok else str(detail)
    def on_queue_served(self, queue, ok, reason="", detail=""):
        self.queue_served.labels(queue).set(1 if ok else 0)
        if ok or reason != "unknown_queue":
            self.unknown_queues.pop(queue, None)
        if not ok and reason == "unknown_queue":
            self.unknown_queues[queue] = detail or f"queue {queue!r} unknown to the server"
    def on_pull(self, queue, result): self.pulls.labels(queue, result).inc()
    def on_busy(self, queue, seconds): self.busy.labels(queue).inc(max(0.0, seconds))
    def on_slots(self, queue, count): self.slots.labels(queue).set(count)
    def on_reposted(self, queue): self.reposted.labels(queue).inc()
    def on_put_failed(self, queue, status): self.put_failures.labels(queue, str(status)).inc()
    def on_poison(self, queue, reason): self.poison.labels(queue, reason).inc()
    def on_backend_ready(self, ok, detail=""):
        self.backend_ok = (bool(ok), detail or ("ok" if ok else "sandbox backend unusable"))
    def on_ledger(self, outcome, seconds):
        self.ledger.labels(outcome).inc()
        self.ledger_seconds.observe(seconds)
    def on_hint(self, outcome, seconds, tokens=0):
        self.hints.labels(outcome).inc()
        self.hint_seconds.labels(outcome).observe(seconds)
        self.hint_tokens.inc(tokens)

    def liveness(self) -> tuple[bool, str]:
        if not self.requires_loop:
            return True, "ok"
        if self.last_progress is None:
            return False, "pull loop has not started"
        age = time.monotonic() - self.last_progress
        if age > self.stall_seconds:
            return False, f"pull loop stalled {age:.0f}s"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        """Ready = logged in to the queue (daemon only), every configured
        queue known to the server, and the sandbox backend's last check
        passed. The reasons are the actual errors."""
        problems = []
        if self.requires_login and not self.logged_in:
            problems.append(f"not logged in to the queue: {self.login_detail}" if self.login_detail
                            else "not logged in to the queue")
        for queue in sorted(self.unknown_queues):
            problems.append(self.unknown_queues[queue])
        if self.backend_ok is None:
            problems.append("sandbox backend not checked yet")
        elif not self.backend_ok[0]:
            problems.append(f"sandbox backend: {self.backend_ok[1]}")
        return (not problems), ("; ".join(problems) or "ok")


def metric_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name the registry can export (counters' _total/_created,
    histograms' _bucket/_sum/_count, info's _info)."""
    names: set[str] = set()
    for family in registry.collect():
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "info": ("_info",)}.get(family.type, ("",))
        names.update(family.name + sfx for sfx in suffixes)
    return names


def build_hooks(settings: Settings) -> MetricsHooks:
    """Called by the daemon's wiring. The daemon does not start the HTTP
    server itself, so do it here when metrics_port is set (on
    settings.metrics_host, loopback by default)."""
    hooks = MetricsHooks(stall_seconds=_stall_for(settings))
    if settings.hints.enabled:   # ratings, escalations, time to answer: read from the hint store
        from xgrader.hints.loop_metrics import HintLoopCollector
        hooks.registry.register(HintLoopCollector(settings.hints.store))
    if getattr(settings, "metrics_port", None):
        hooks.server = start_metrics_server(settings, hooks, hooks.readiness,
                                            host=getattr(settings, "metrics_host", "127.0.0.1"))
    return hooks


def _stall_for(settings: Settings) -> float:
    """/healthz fails before the in-process stall watchdog would exit: a
    loop iteration is at most ~0.5 s plus one poll backoff, so 60 s without
    one is a wedged loop (capped by the watchdog's own timeout)."""
    watchdog = float(getattr(settings, "stall_timeout_s", 300.0) or 300.0)
    return max(5.0, min(60.0, watchdog))


class InstrumentedBackend(Backend):
    """Wraps a backend to report sandbox start latency (phase
    `sandbox_start`) and sandbox failures by kind (`start`, `wait`,
    `sandbox_error`) through hooks. Everything else is delegated."""

    def __init__(self, inner: Backend, hooks: Hooks, queue: str = "") -> None:
        self.inner, self.hooks, self.queue = inner, hooks, queue
        self.name = getattr(inner, "name", "?")

    def start(self, job: SandboxJob) -> RunningSandbox:
        started = time.monotonic()
        try:
            running = self.inner.start(job)
        except SandboxError:
            self.hooks.on_sandbox_failure(self.name, "start")
            raise
        self.hooks.on_phase(self.queue, "sandbox_start", time.monotonic() - started)
        return _InstrumentedRunning(running, self)

    def run(self, job: SandboxJob) -> SandboxResult:
        with self.start(job) as running:
            return running.wait()

    def python_argv(self, *args: str) -> list[str]:
        return self.inner.python_argv(*args)

    def check(self) -> None:
        self.inner.check()

    def cleanup_stale(self) -> None:
        self.inner.cleanup_stale()

    def kill_label(self, label: str) -> None:
        self.inner.kill_label(label)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # backend-specific extras
        return getattr(self.inner, name)


class _InstrumentedRunning(RunningSandbox):
    def __init__(self, inner: RunningSandbox, owner: InstrumentedBackend) -> None:
        self.inner, self.owner = inner, owner

    @property
    def channel(self):  # type: ignore[override]
        return self.inner.channel

    def wait(self, timeout: float | None = None) -> SandboxResult:
        try:
            result = self.inner.wait(timeout)
        except SandboxError:
            self.owner.hooks.on_sandbox_failure(self.owner.name, "wait")
            raise
        if result.verdict is Verdict.sandbox_error:
            self.owner.hooks.on_sandbox_failure(self.owner.name, "sandbox_error")
        return result

    def kill(self) -> None:
        self.inner.kill()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class MetricsServer:
    """/metrics, /healthz, /readyz on waitress (xgrader.wsgi_server): a few
    threads and connections are plenty for scrapes and probes."""

    def __init__(self, host: str, port: int, hooks: MetricsHooks,
                 readiness: Callable[[], tuple[bool, str]]) -> None:
        self.hooks, self.readiness = hooks, readiness
        self._srv = WSGIServer(self._app, host, port, threads=2, max_connections=32, max_body_bytes=65536,
                               idle_timeout_s=30.0, name="metrics")
        self.host, self.port = self._srv.host, self._srv.port
        self._srv.start()

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
        self._srv.shutdown(grace_s=2.0)


def start_metrics_server(settings: Settings, hooks: MetricsHooks,
                         readiness: Callable[[], tuple[bool, str]],
                         host: str = "127.0.0.1") -> MetricsServer:
    """Loopback by default; containers set XGRADER_METRICS_HOST=0.0.0.0 so
    Prometheus and the kubelet probes can reach it."""
    srv = MetricsServer(host, int(settings.metrics_port or 0), hooks, readiness)
    log.info("metrics_server_started", host=host, port=srv.port)
    return srv
