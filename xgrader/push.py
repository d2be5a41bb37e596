"""Push mode (xqueue's passive grader): xqueue POSTs a raw JSON body
``{"xqueue_body": "<LMS body>", "xqueue_files": "{...}"}`` (no content type)
and forwards our HTTP 200 response text, within 30 s, to the LMS as the result.

xqueue never retries a push: a grader that is down, answers after 30 s or
answers anything but 200 makes xqueue tell the LMS "could not be graded",
and the student must resubmit. So a request that finds every grading slot
taken waits for one, as long as grading can still finish within the 30 s;
only then is it answered 503 (a load balancer may send it elsewhere).

Each request is graded like a pulled submission: parsed layer by layer with
xgrader.wire, files fetched with a timeout and a size cap, graded by
xgrader.pipeline.grade_request in a forked, deadline-guarded child
(xgrader.daemon.supervisor) with the same limits, backend and metrics. The
HTTP server is waitress (xgrader.wsgi_server).

Answers:
  200 + {"correct","score","msg"}  graded; also for a malformed inner layer
                                    (clear error message, like the daemon)
  200 + could-not-grade body        the child timed out or hit an
                                    infrastructure failure (no retry fits in 30 s)
  400 + {"error": ...}              the outer body is not a push request
  413                               body larger than MAX_BODY_BYTES
  503 + {"error": "busy"}          no grading slot freed in time to grade
                                    within the budget
GET /healthz, /readyz, /metrics are served on the same port.
"""

from __future__ import annotations

import json
import os
import select
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError
from werkzeug.wrappers import Request, Response

from xgrader.daemon.child import PhaseRecorder
from xgrader.daemon.messages import ChildReport, Reporter
from xgrader.daemon.supervisor import Supervisor
from xgrader.errors import InfraError
from xgrader.hooks import HookChain
from xgrader.logs import bind_submission
from xgrader.metrics import InstrumentedBackend, MetricsHooks
from xgrader.backends.base import SandboxError
from xgrader.wire import GraderReply, PayloadError, parse_submission
from xgrader.wsgi_server import WSGIServer

if TYPE_CHECKING:
    from xgrader.config import Settings

log = structlog.get_logger(__name__)

PUSH_QUEUE = "push"           # the queue label push-mode metrics carry
MAX_DEADLINE_S = 28.0         # xqueue gives a passive grader 30 s in total
MIN_GRADE_S = 5.0             # a queued request starts grading only with this much budget left
MAX_BODY_BYTES = 2_000_000    # a push body holds code and a file map, not files
BACKEND_CHECK_EVERY_S = 30.0


class PushRequest(BaseModel):
    """The outer body xqueue sends. Inner layers are checked by xgrader.wire."""

    model_config = ConfigDict(extra="ignore")

    xqueue_body: str | dict[str, Any]
    xqueue_files: str | dict[str, Any] | None = "{}"


def parse_push(raw: bytes, request_id: str):
    """-> wire.Submission; ValueError for a body that is not a push request,
    PayloadError (naming the layer) for a malformed inner layer."""
    try:
        outer = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"body is not JSON ({exc})") from None
    if not isinstance(outer, dict):
        raise ValueError("body must be a JSON object with xqueue_body")
    try:
        push = PushRequest.model_validate(outer)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValueError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    # Push requests carry no header: a synthetic one lets the same parser
    # check every inner layer (and names the request in errors).
    content = {
        "xqueue_header": json.dumps({"submission_id": request_id, "submission_key": "push"}),
        "xqueue_body": push.xqueue_body,
        "xqueue_files": push.xqueue_files or "{}",
    }
    return parse_submission(content)


def fetch_files(files: dict[str, str], settings: Settings, hooks: Any = None) -> dict[str, bytes]:
    """Download a submission's files like the daemon does (xgrader.downloads):
    timeouts, settings.max_file_bytes per file, URL_FOR_EXTERNAL_DICTS
    indirection, PayloadError on a bad map. No queue here: nothing is sent
    with credentials, and every host's address is checked (XGRADER_FILE_HOSTS)."""
    from xgrader.downloads import fetch_files as download_files

    return download_files(files, settings)


class PushServer:
    """The WSGI app plus its bounded pool of grading slots."""

    def __init__(self, settings: Settings, backend: Any, *, hooks: HookChain | None = None,
                 metrics: MetricsHooks | None = None, hints: Any = None,
                 deadline_s: float | None = None, budget_s: float = MAX_DEADLINE_S) -> None:
        self.settings = settings
        self.backend = backend
        self.metrics = metrics or MetricsHooks()
        self.metrics.requires_login = False   # no queue session in push mode
        self.metrics.requires_loop = False    # no pull loop: alive = answering
        self.hooks = hooks or HookChain(self.metrics)
        self.hints = hints
        self.cache: Any = None   # pipeline.GradingCache, filled by _preload before any fork
        self.deadline_s = min(deadline_s or settings.job_timeout_s, MAX_DEADLINE_S)
        # From a request's arrival to its answer: xqueue waits 30 s, less a margin.
        self.budget_s = min(budget_s, MAX_DEADLINE_S)
        self.slots = threading.BoundedSemaphore(settings.concurrency)
        self._in_flight = 0
        self.waiting = 0  # requests waiting for a grading slot
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._checker = threading.Thread(target=self._check_backend_forever, daemon=True,
                                         name="backend-check")

    # -- WSGI ------------------------------------------------------------------
    def __call__(self, environ, start_response):
        arrived = time.monotonic()
        req = Request(environ)
        if req.method == "GET" and req.path in ("/healthz", "/readyz", "/metrics"):
            resp = self._ops(req.path)
        elif req.method == "POST":
            resp = self._push(req, arrived)
            self.metrics.push_requests.labels(str(resp.status_code)).inc()
        else:
            resp = _json({"error": "POST a push request, or GET /healthz /readyz /metrics"}, 405)
        return resp(environ, start_response)

    def _ops(self, path: str) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        if path == "/metrics":
            return Response(generate_latest(self.metrics.registry), content_type=CONTENT_TYPE_LATEST)
        ok, why = self.metrics.liveness() if path == "/healthz" else self.metrics.readiness()
        return _json({"ok": ok, "detail": why}, 200 if ok else 503)

    def _push(self, req: Request, arrived: float) -> Response:
        if (req.content_length or 0) > MAX_BODY_BYTES:
            return _json({"error": f"body larger than {MAX_BODY_BYTES} bytes"}, 413)
        raw = req.get_data(cache=False)
        if len(raw) > MAX_BODY_BYTES:
            return _json({"error": f"body larger than {MAX_BODY_BYTES} bytes"}, 413)
        request_id = f"push-{uuid.uuid4().hex[:12]}"
        with bind_submission(PUSH_QUEUE, request_id):
            try:
                submission = parse_push(raw, request_id)
            except PayloadError as exc:
                from xgrader import pipeline
                log.error("payload_error", layer=exc.layer, error=exc.detail)
                self.hooks.on_pulled(PUSH_QUEUE, request_id)
                self.hooks.on_graded(PUSH_QUEUE, "", "payload_error", 0.0)
                return _reply(pipeline.reply_for(pipeline.payload_error_report(exc.layer, exc.detail)))
            except ValueError as exc:
                log.error("push_body_invalid", error=str(exc)[:300])
                return _json({"error": f"not an xqueue push request: {exc}"}, 400)
            answer_by = arrived + self.budget_s
            if not self._take_slot(answer_by):
                log.warning("push_busy", concurrency=self.settings.concurrency,
                            waited_s=round(time.monotonic() - arrived, 3))
                return _json({"error": "busy: no grading slot freed in time, retry later"}, 503)
            try:
                deadline = min(self.deadline_s, answer_by - time.monotonic())
                return self._grade(submission, request_id, deadline)
            finally:
                self.slots.release()

    def _take_slot(self, answer_by: float) -> bool:
        """A grading slot, waiting for one while grading could still be
        answered by `answer_by`; False when none freed in time."""
        if self.slots.acquire(blocking=False):
            return True
        min_grade = min(self.deadline_s, MIN_GRADE_S)
        wait = answer_by - min_grade - time.monotonic()
        if wait <= 0:
            return False
        log.info("push_waiting_for_slot", concurrency=self.settings.concurrency, max_wait_s=round(wait, 3))
        with self._lock:
            self.waiting += 1
        try:
            return self.slots.acquire(timeout=wait)
        finally:
            with self._lock:
                self.waiting -= 1

    # -- grading -----------------------------------------------------------------
    def _grade(self, submission: Any, request_id: str, deadline: float) -> Response:
        self.hooks.on_pulled(PUSH_QUEUE, request_id)
        self._set_in_flight(+1)
        try:
            sup, handle = self._run_child(submission, request_id, deadline)
        finally:
            self._set_in_flight(-1)
        seconds = (handle.finished or time.monotonic()) - handle.started
        report = handle.report
        replayed = 0
        if report is not None:
            replayed = len(report.events)
            self.hooks.replay(report.events)
            for phase, secs in report.phases.items():
                self.hooks.on_phase(PUSH_QUEUE, phase, secs)
        if sup.children:
            # The child reported and records its attempt now: answer, and reap
            # it once the answer is written (its late hook calls replayed then).
            finish = lambda: self._finish_child(sup, handle, replayed)  # noqa: E731
        else:
            finish = None
        response = self._answer(submission, handle, report, seconds)
        if finish is not None:
            response.call_on_close(finish)
        return response

    def _answer(self, submission: Any, handle: Any, report: Any, seconds: float) -> Response:
        if report is None or report.outcome == "infra" or report.reply is None:
            kind = (report.infra_kind if report is not None else None) or (
                "timeout" if handle.killed_for == "timeout" else "child_died")
            self.hooks.on_infra_failure(PUSH_QUEUE, kind)
            self.hooks.on_graded(PUSH_QUEUE, submission.payload.grader, "could_not_grade", seconds)
            log.error("push_could_not_grade", kind=kind, exit_code=handle.exit_code,
                      seconds=round(seconds, 3), assignment=submission.payload.grader)
            return _reply(GraderReply.could_not_grade())
        self.hooks.on_graded(PUSH_QUEUE, report.assignment, report.grade_outcome, seconds)
        log.info("push_graded", assignment=report.assignment, outcome=report.grade_outcome,
                 score=report.score, seconds=round(seconds, 3))
        return Response(report.reply, status=200, content_type="application/json")

    def _run_child(self, submission: Any, request_id: str, deadline: float):
        sup = Supervisor(on_kill=lambda h: _kill_label(self.backend, h.label))
        label = f"xgp-{os.getpid()}-{request_id}"
        handle = sup.spawn(lambda reporter: self._child(submission, request_id, label, reporter),
                           timeout=deadline, label=label)
        self._wait_child(sup, handle, until_report=True)
        return sup, handle

    def _finish_child(self, sup: Supervisor, handle: Any, replayed: int) -> None:
        """After the answer went out: reap the child (bounded) and replay the
        hook calls it made after its report (the ledger's outcome)."""
        try:
            self._wait_child(sup, handle, until_report=False)
            if handle.report is not None:
                self.hooks.replay(handle.report.events[replayed:])
        except Exception:
            log.exception("push_child_reap_failed", label=handle.label)

    def _wait_child(self, sup: Supervisor, handle: Any, until_report: bool) -> None:
        end = handle.deadline + 10.0  # kill + reap, bounded
        while sup.children and time.monotonic() < end:
            if until_report and handle.report is not None and handle.report.outcome != "infra":
                return
            wait = max(0.0, min(0.5, handle.deadline - time.monotonic()))
            try:
                select.select([handle.fd] if handle.exit_status is None else [], [], [], wait)
            except (OSError, ValueError):
                time.sleep(0.01)
            sup.poll()
            if sup.children and handle.killed_for is not None:
                time.sleep(0.01)
        if sup.children:  # could not reap in time: never leave it behind
            sup.kill_all("timeout")
            sup.wait_all(timeout=5.0)

    def _child(self, submission: Any, request_id: str, label: str, reporter: Reporter) -> None:
        """In the forked child: fetch, grade, report the reply body."""
        from xgrader import pipeline
        from xgrader.job import GradedSubmission, GradeRequest

        srv = getattr(self, "_srv", None)
        if srv is not None:  # the listening socket is the parent's alone
            srv.close_listener_in_child()

        recorder = PhaseRecorder()      # grading's own phases (run), labelled push here
        phases = recorder.phases
        assignment = submission.payload.grader
        with bind_submission(PUSH_QUEUE, request_id, assignment):
            try:
                started = time.perf_counter()
                files = fetch_files(submission.files, self.settings, self.hooks) if submission.files else {}
                phases["fetch"] = time.perf_counter() - started
                request = GradeRequest(
                    grader=assignment, options=submission.payload.options,
                    student_response=submission.body.student_response, files=files,
                    student_id=submission.student.anonymous_student_id, submission_id=request_id,
                    hint_type=submission.payload.hint_type, label=label,
                )
                backend = InstrumentedBackend(self.backend, self.hooks, PUSH_QUEUE)
                started = time.perf_counter()
                report, reply = pipeline.grade_request(request, self.settings, backend, recorder, self.hints,
                                                       cache=self.cache)
                phases["grade"] = time.perf_counter() - started
            except PayloadError as exc:
                log.error("payload_error", layer=exc.layer, error=exc.detail)
                reply = pipeline.reply_for(pipeline.payload_error_report(exc.layer, exc.detail))
                reporter.report(ChildReport(outcome="posted", assignment=assignment, phases=phases,
                                            grade_outcome="payload_error", reply=reply.to_body(),
                                            events=self.hooks.take_child_events()))
                return
            except (InfraError, SandboxError) as exc:
                kind = "sandbox_start" if isinstance(exc, SandboxError) else "infra"
                log.error("infra_failure", kind=kind, error=str(exc)[:500])
                reporter.report(ChildReport(outcome="infra", infra_kind=kind, detail=str(exc)[:500],
                                            phases=phases, assignment=assignment,
                                            events=self.hooks.take_child_events()))
                return
            except Exception as exc:
                log.exception("handler_crash")
                reporter.report(ChildReport(outcome="infra", infra_kind="handler_crash",
                                            detail=f"{type(exc).__name__}: {str(exc)[:400]}",
                                            phases=phases, assignment=assignment,
                                            events=self.hooks.take_child_events()))
                return
            reporter.report(ChildReport(
                outcome="posted", assignment=assignment, phases=phases,
                grade_outcome=report.outcome.value, score=report.score, max_score=report.max_score,
                reply=reply.to_body(), events=self.hooks.take_child_events()))
            # The parent answers now; the record (ledger) is written meanwhile.
            try:
                self.hooks.on_attempt(GradedSubmission(
                    source="push", request=request, report=report, reply=reply, queue=PUSH_QUEUE,
                    graded_at=time.time(), timings=dict(phases)))
                reporter.events(self.hooks.take_child_events())
            except Exception as exc:
                log.warning("record_attempt_failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")

    def _set_in_flight(self, delta: int) -> None:
        with self._lock:
            self._in_flight += delta
            self.hooks.on_in_flight(PUSH_QUEUE, self._in_flight)

    # -- readiness -----------------------------------------------------------------
    def _check_backend_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.backend.check()
                self.hooks.on_backend_ready(True, "ok")
            except Exception as exc:
                detail = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.warning("sandbox_backend_unready", detail=detail)
                self.hooks.on_backend_ready(False, detail)
            self._stop.wait(BACKEND_CHECK_EVERY_S)

    # -- serving -------------------------------------------------------------------
    def serve(self, host: str, port: int, ready: threading.Event | None = None):
        """Blocking; returns after :meth:`shutdown`, once the requests being
        graded have been answered."""
        self._preload()
        self._checker.start()
        # A thread per request being graded or waiting for a slot, and a few
        # for probes and scrapes, so waitress itself never queues a push.
        self._srv = WSGIServer(self, host, port, threads=4 * self.settings.concurrency + 4,
                               max_connections=max(100, 8 * self.settings.concurrency),
                               max_body_bytes=2 * MAX_BODY_BYTES, name="push")
        self.port = self._srv.port
        log.info("push_server_started", host=host, port=self.port, concurrency=self.settings.concurrency,
                 deadline_s=self.deadline_s, backend=getattr(self.backend, "name", "?"))
        if ready is not None:
            ready.set()
        try:
            self._srv.serve_forever()
        finally:
            self._stop.set()
            log.info("push_server_stopped")

    def shutdown(self) -> None:
        """Stop accepting; requests being graded (or waiting for a slot)
        still get their answer, bounded by the budget."""
        srv = getattr(self, "_srv", None)
        if srv is not None:
            srv.shutdown(grace_s=self.budget_s + 10.0)

    def _preload(self) -> None:
        """Before any child is forked: load assignments and expected values
        once (every child inherits the cache, as in the daemon) and start the
        backend's long-lived helpers (bwrap's fork servers), which the
        children then share."""
        try:
            from xgrader import pipeline
            cache = pipeline.GradingCache(self.settings)
            cache.preload()
            self.cache = cache
        except Exception as exc:
            log.warning("grading_preload_failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")
        prepare = getattr(self.backend, "prepare", None)
        if callable(prepare):
            try:
                prepare()
            except Exception as exc:  # jobs start cold: slower, not wrong
                log.warning("backend_prepare_failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")


def _kill_label(backend: Any, label: str) -> None:
    kill = getattr(backend, "kill_label", None)
    if callable(kill):
        kill(label)


def _reply(reply: GraderReply) -> Response:
    return Response(reply.to_body(), status=200, content_type="application/json")


def _json(obj: dict, status: int) -> Response:
    return Response(json.dumps(obj), status=status, content_type="application/json")
