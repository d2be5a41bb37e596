"""The parent: pull round-robin, fork a child per submission, supervise,
answer what the children could not.

The parent parses only layers 1-2 of a pull (id and key), never runs job
code, and posts the one put_result of each pull over its kept-alive
connection: the reply body a child reported (outcome "graded"), or
could-not-grade when infrastructure failures exhausted `max_attempts` or
the submission is known to be poison. A child that died before reporting
is retried (bounded); a report is posted once, never retried after the
server may have taken it. Jobs that post themselves (grade_and_post)
announce "posting" first; the parent never posts for such a pull.

Children are forked ahead of their job ("ready children", one per slot)
whenever no job runs: the fork, its copy-on-write faults and, with a warm
pool, the sandbox start happen while the daemon waits for work, not between
pull and post. Once they are used up (a steady stream of work), each job
gets a fresh fork.

Children are forked by the forker (forker.py), a copy of this process made
once after the grading path is loaded and the client logged in: the parent,
which runs the HTTP loop, then shares no pages with a live child (no fork
and no copy-on-write faults here per job). Without it (`forker=False`, or
while it is gone) the parent forks them itself.
"""

from __future__ import annotations

import gc
import json
import os
import select
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import structlog

from xgrader.daemon.backoff import Backoff
from xgrader.daemon.child import JobContext, classify_put, fresh_connections, grade_and_report
from xgrader.daemon.ledger import AttemptLedger
from xgrader.daemon.messages import Reporter
from xgrader.daemon.signals import SignalState
from xgrader.daemon.supervisor import ChildHandle, Supervisor
from xgrader.daemon.watchdog import StallWatchdog
from xgrader.hooks import Hooks, HookChain
from xgrader.wire import GraderReply, PayloadError, parse_header

if TYPE_CHECKING:
    from xgrader.config import Settings

log = structlog.get_logger(__name__)

JobFn = Callable[[JobContext, Reporter], None]

EXIT_OK = 0
EXIT_FORCED = 1          # second signal, or in-flight jobs outlived the grace period
QUEUE_LENGTH_EVERY_S = 10.0
BACKEND_CHECK_EVERY_S = 30.0   # readiness: the sandbox backend still starts
BACKEND_CHECK_TIMEOUT_S = 20.0
MAX_WAIT_S = 0.5         # select() cap: signals and deadlines are seen within this
READY_PAUSE_S = 5.0      # no ready children for this long after one failed


@dataclass
class Pull:
    queue: str
    content: str
    header_raw: str
    submission_id: str
    label: str
    tries: int = 0   # forks for this pull
    post_outcome: tuple[str, str] | None = None   # set once the parent posted (or tried)
    holds_slot: bool = False   # counted in in_flight: its child has not given its final word yet


class Daemon:
    def __init__(
        self,
        settings: Settings,
        client: Any,
        backend: Any,
        hooks: Hooks | None = None,
        *,
        job: JobFn = grade_and_report,
        ready_children: int | None = None,
        hints: Any = None,
        install_signals: bool = True,
        watchdog: bool = True,
    ) -> None:
        self.settings = settings
        self.client = client
        self.backend = backend
        self.hooks = hooks if isinstance(hooks, HookChain) else HookChain(hooks or Hooks())
        self.job = job
        self.hints = hints
        self.signals = SignalState()
        self._install_signals = install_signals
        self.supervisor = Supervisor(on_kill=self._kill_sandboxes)
        self.ledger = AttemptLedger()
        self.backoff = Backoff(settings.poll_min_s, settings.poll_max_s)
        self.watchdog = StallWatchdog(settings.stall_timeout_s) if watchdog else None
        self.in_flight: dict[str, int] = {q: 0 for q in settings.queue_names}
        self._rr = 0
        self._next_queuelen = 0.0
        self._next_backend_check = 0.0
        self._backend_check: threading.Thread | None = None
        self._backend_check_started = 0.0
        self._idle_until = 0.0
        self._drain_deadline: float | None = None
        # Children forked ahead of their job: one per slot by default.
        self.ready_target = (settings.concurrency * len(settings.queue_names)
                             if ready_children is None else ready_children)
        self._ready_seq = 0
        self._ready_paused_until = 0.0
        self.grading_cache: Any = None   # pipeline.GradingCache, filled by _preload
        self._helpers: tuple = ()        # the backend's helpers the forker was forked with
        self._check_seen = True

    # -- public --------------------------------------------------------------
    @property
    def flags(self):
        return self.signals.flags

    def run(self) -> int:
        if self._install_signals:
            self.signals.install()
        if self.watchdog:
            self.watchdog.start()
        log.info("daemon_started", pid=os.getpid(), queues=self.settings.queue_names,
                 concurrency=self.settings.concurrency, backend=getattr(self.backend, "name", "?"))
        try:
            self._safe(self.backend.cleanup_stale, "cleanup_stale")
            # Long-lived sandbox helpers (bwrap's fork servers) start here, in
            # the parent, so every forked child shares them.
            self._safe(getattr(self.backend, "prepare", lambda: None), "prepare")
            if hasattr(self.backend, "prewarm_after_fork"):
                # Only ready children pre-start a sandbox (they wait for work
                # meanwhile); a child forked for a pulled job starts cold: a
                # warm start there would cost CPU under load for no latency.
                self.backend.prewarm_after_fork = False
            self._preload()
            # What is loaded now lives as long as the daemon: keep the collector
            # off it, in the parent and in every forked child (fewer
            # copy-on-write faults, shorter collections).
            gc.freeze()
            if not self._login():
                return EXIT_OK if not self.flags.hard_stop else EXIT_FORCED
            self._start_forker()
            return self._loop()
        except BaseException:
            # A bug in the loop: take the children down with us (their leases
            # expire; nothing is lost) and let the process supervisor restart.
            log.exception("daemon_crashed", in_flight=len(self.supervisor))
            self.supervisor.kill_all("crash")
            self.supervisor.wait_all(timeout=5.0)
            raise
        finally:
            self.supervisor.close_forkers()
            if self.watchdog:
                self.watchdog.stop()
            if self._install_signals:
                self.signals.uninstall()
            self._safe(self.backend.close, "backend_close")
            log.info("daemon_stopped", pid=os.getpid())

    # -- main loop -----------------------------------------------------------
    def _loop(self) -> int:
        while True:
            self._tick()
            if self.flags.hard_stop:
                log.warning("shutdown_forced", in_flight=len(self.supervisor))
                self._kill_everything("shutdown")
                return EXIT_FORCED
            if self.flags.draining:
                if self._drain_deadline is None:
                    self.supervisor.retire_ready()
                    self._drain_deadline = time.monotonic() + self.settings.shutdown_grace_s
                    log.info("shutdown_draining", in_flight=len(self.supervisor),
                             grace_s=self.settings.shutdown_grace_s)
                if not self.supervisor.children:
                    log.info("shutdown_complete")
                    return EXIT_OK
                if time.monotonic() >= self._drain_deadline:
                    log.warning("shutdown_grace_expired", in_flight=len(self.supervisor))
                    self._kill_everything("shutdown")
                    return EXIT_FORCED
            else:
                self._report_queue_lengths()
                self._check_backend()
                if time.monotonic() >= self._idle_until:
                    got = self._pull_round()
                    if got:
                        self.backoff.reset()
                        self._idle_until = 0.0
                    elif self._has_free_slot():
                        self._idle_until = time.monotonic() + self.backoff.next_delay()
                if not any(self.in_flight.values()):
                    # Only while no job runs: a fork (and a warm sandbox start)
                    # next to a grading child slows that child on a busy box.
                    # Under a steady stream jobs get a fresh fork, as before.
                    self._top_up_ready()
            self._wait()
            for handle in self.supervisor.poll():
                self._finished(handle)
            self._post_reported()

    def _tick(self) -> None:
        if self.watchdog:
            self.watchdog.tick()
        self.hooks.on_loop_progress()

    def _wait(self) -> None:
        """Sleep until a child speaks or exits, a signal arrives, a deadline or
        the idle backoff passes."""
        now = time.monotonic()
        until = [now + MAX_WAIT_S]
        if self._idle_until > now and not self.flags.draining:
            until.append(self._idle_until)
        elif self._has_free_slot() and not self.flags.draining:
            until.append(now)  # more work may be waiting: pull again at once
        deadline = self.supervisor.next_deadline()
        if deadline is not None:
            until.append(deadline)
        if self._drain_deadline is not None:
            until.append(self._drain_deadline)
        timeout = max(0.0, min(until) - now)
        fds = self.supervisor.fds()
        if self.signals.wake_r >= 0:
            fds.append(self.signals.wake_r)
        if timeout == 0 and not fds:
            return
        try:
            select.select(fds, [], [], timeout)
        except (InterruptedError, OSError, ValueError):
            pass
        if self.signals.wake_r >= 0:
            self.signals.drain_wakeups()

    # -- pulling -------------------------------------------------------------
    def _has_free_slot(self) -> bool:
        return any(n < self.settings.concurrency for n in self.in_flight.values())

    def _pull_round(self) -> bool:
        """One pull per queue with a free slot, starting at a rotating queue."""
        queues = self.settings.queue_names
        got = False
        for i in range(len(queues)):
            queue = queues[(self._rr + i) % len(queues)]
            if self.flags.draining or self.in_flight[queue] >= self.settings.concurrency:
                continue
            content = self._get_submission(queue)
            if content is not None:
                got = True
                self._accept(queue, content)
        self._rr = (self._rr + 1) % max(1, len(queues))
        return got

    def _get_submission(self, queue: str) -> str | None:
        try:
            return self.client.get_submission(queue)
        except Exception as exc:  # a dead queue server: back off, keep going
            log.warning("pull_failed", queue=queue, error=f"{type(exc).__name__}: {str(exc)[:200]}")
            return None

    def _accept(self, queue: str, content: str) -> None:
        try:
            header_raw, header = parse_header(content)
        except PayloadError as exc:
            # Without a key nobody can answer it; the lease will bring it back.
            log.error("payload_error", queue=queue, layer=exc.layer, error=exc.detail,
                      submission_id=exc.submission_id)
            return
        sid = str(header.submission_id)
        self.hooks.on_pulled(queue, sid)
        pull = Pull(queue=queue, content=content, header_raw=header_raw, submission_id=sid,
                    label=f"xg-{os.getpid()}-{_label_safe(sid)}")
        if self.ledger.count(sid) >= self.settings.max_attempts:
            log.error("poison_submission", submission_id=sid, queue=queue,
                      attempts=self.ledger.count(sid))
            self._answer_could_not_grade(pull)
            return
        self._fork(pull)

    def _fork(self, pull: Pull) -> None:
        pull.tries += 1
        if pull.post_outcome is not None and pull.post_outcome[0] == "bad_reply":
            pull.post_outcome = None  # nothing was posted: the retry may post
        attempt = self.ledger.add(pull.submission_id)
        fields = {"content": pull.content, "queue": pull.queue, "header_raw": pull.header_raw,
                  "submission_id": pull.submission_id, "label": pull.label, "attempt": attempt}
        timeout = self.settings.job_timeout_s
        job = json.dumps(fields).encode()
        ready = self.supervisor.ready()
        if not (ready and self.supervisor.assign(ready[0], job, timeout=timeout,
                                                 label=pull.label, context=pull)):
            self.supervisor.spawn_job(job, lambda reporter: self._ready_child(reporter, job), timeout=timeout,
                                      label=pull.label, context=pull)
        pull.holds_slot = True
        self.in_flight[pull.queue] += 1
        self.hooks.on_in_flight(pull.queue, self.in_flight[pull.queue])
        log.debug("child_forked", submission_id=pull.submission_id, queue=pull.queue, attempt=attempt)

    def _context(self, fields: dict[str, Any]) -> JobContext:
        return JobContext(settings=self.settings, client=self.client, backend=self.backend,
                          hints=self.hints, hooks=self.hooks, cache=self.grading_cache, **fields)

    def _child(self, ctx: JobContext, reporter: Reporter) -> None:
        """In the child: the job, then drop a pre-started sandbox it did not use."""
        try:
            fresh_connections(ctx.client)
            self.job(ctx, reporter)
        finally:
            self._drop_idle()

    def _start_forker(self) -> None:
        """Fork the forker (once the grading path is loaded and the client has
        its session): it forks every job child from then on."""
        if not getattr(self.settings, "forker", True):
            return
        from xgrader.daemon.forker import start_forker

        def in_forker() -> None:
            # What the parent's loop owns, the forker must not hold or use:
            # live children's pipe ends and an older forker's socket (held
            # here, they would never reach EOF), the keep-alive connection,
            # the signal wake-up pipe.
            self.supervisor.drop_inherited()
            fresh_connections(self.client)
            for fd in (self.signals.wake_r, self.signals.wake_w):
                if fd >= 0:
                    os.close(fd)

        try:
            forker = start_forker(self._ready_child, self._prewarm, in_forker)
        except OSError as exc:  # EAGAIN, ENOMEM: children are forked here instead
            log.warning("forker_start_failed", error=str(exc)[:200])
            return
        self.supervisor.use_forker(forker)
        self._helpers = self._backend_helpers()

    def _backend_helpers(self) -> tuple:
        helpers = getattr(self.backend, "helpers", None)
        try:
            return tuple(helpers()) if callable(helpers) else ()
        except Exception:
            return ()

    def _ready_child(self, reporter: Reporter, job: bytes) -> None:
        """In a ready child, once assign() or retire_ready() spoke; in a child
        forked for a job, at once."""
        if not job:  # retired without a job
            self._drop_idle()
            return
        self._child(self._context(json.loads(job)), reporter)

    def _prewarm(self) -> None:
        prewarm = getattr(self.backend, "prewarm", None)
        if callable(prewarm):
            prewarm()

    def _drop_idle(self) -> None:
        drop = getattr(self.backend, "drop_idle", None)
        if callable(drop):
            drop()

    def _top_up_ready(self) -> None:
        """Fork ready children up to the target (never while draining). A
        failing fork, or ready children dying on their own, pauses this for
        READY_PAUSE_S: jobs then get a fresh fork each, as without them."""
        if time.monotonic() < self._ready_paused_until:
            return
        missing = self.ready_target - len(self.supervisor.ready())
        for _ in range(max(0, missing)):
            self._ready_seq += 1
            try:
                self.supervisor.spawn_ready(self._ready_child, label=f"xg-{os.getpid()}-ready{self._ready_seq}",
                                            prepare=self._prewarm)
            except OSError as exc:  # EAGAIN, ENOMEM: not fatal here
                log.warning("ready_child_fork_failed", error=str(exc)[:200])
                self._ready_paused_until = time.monotonic() + READY_PAUSE_S
                return

    # -- results -------------------------------------------------------------
    def _post_reported(self) -> None:
        """Post replies as soon as their child reports them (before it is
        reaped): exactly once per pull, from this process. A child whose
        final word is in (anything but an infrastructure failure, which is
        retried in the same slot) frees its slot now: the next pull and fork
        overlap its exit instead of waiting for the reap (~10 ms per job
        under load). It is still supervised (deadline, reaping) until it is
        gone; grading children never exceed the concurrency."""
        for handle in list(self.supervisor.children.values()):
            report = handle.report
            if not handle.assigned or report is None:
                continue
            pull: Pull = handle.context
            if report.outcome == "graded":
                self._post_reply(pull, report)
                if pull.post_outcome is not None and pull.post_outcome[0] != "bad_reply":
                    self._release_slot(pull)
            elif report.outcome != "infra":
                self._release_slot(pull)

    def _release_slot(self, pull: Pull) -> None:
        if pull.holds_slot:
            pull.holds_slot = False
            self.in_flight[pull.queue] -= 1
            self.hooks.on_in_flight(pull.queue, self.in_flight[pull.queue])

    def _post_reply(self, pull: Pull, report: Any) -> None:
        if pull.post_outcome is not None:
            return  # posted (or tried) already: never twice
        if self.flags.hard_stop:
            pull.post_outcome = ("post_failed", "forced shutdown: not posted, the lease brings it back")
            return
        try:
            reply = GraderReply.model_validate_json(report.reply or "")
        except ValueError as exc:  # a child's bug, not the student's: infra, retried
            pull.post_outcome = ("bad_reply", str(exc)[:300])
            return
        pull.post_outcome = ("post_failed", "not answered")  # set before: a crash mid-post never re-posts
        started = time.perf_counter()
        try:
            pull.post_outcome = classify_put(self.client.put_result(pull.header_raw, reply))
        except Exception as exc:  # the lease expires and the submission comes back
            pull.post_outcome = ("post_failed", f"{type(exc).__name__}: {str(exc)[:300]}")
        self.hooks.on_phase(pull.queue, "post", time.perf_counter() - started)

    def _finished(self, handle: ChildHandle) -> None:
        if not handle.assigned:
            if handle.exit_code not in (0, None) and handle.killed_for is None and not self.flags.draining:
                log.warning("ready_child_died", pid=handle.pid, exit_code=handle.exit_code)
                self._ready_paused_until = time.monotonic() + READY_PAUSE_S
            return  # a ready child without a job: nothing to answer
        pull: Pull = handle.context
        self._release_slot(pull)
        seconds = (handle.finished or time.monotonic()) - handle.started
        report = handle.report
        bound = log.bind(submission_id=pull.submission_id, queue=pull.queue, pid=handle.pid,
                         assignment=report.assignment if report is not None else "")
        if report is not None:
            self.hooks.replay(report.events)
            for phase, secs in report.phases.items():
                self.hooks.on_phase(pull.queue, phase, secs)
            if report.outcome == "graded":
                self._post_reply(pull, report)
                outcome, detail = pull.post_outcome or ("post_failed", "")
                if outcome == "bad_reply":
                    report = report.model_copy(update={"outcome": "infra", "infra_kind": "bad_reply",
                                                       "detail": detail})
                else:
                    report = report.model_copy(update={"outcome": outcome, "detail": detail})
            if report.outcome == "infra":
                self.hooks.on_infra_failure(pull.queue, report.infra_kind or "infra")
                self._retry_or_give_up(pull, report.infra_kind or "infra")
                return
            if report.grade_outcome:
                self.hooks.on_graded(pull.queue, report.assignment, report.grade_outcome, seconds)
            if report.outcome == "posted":
                self.hooks.on_posted(pull.queue, True)
                self.ledger.forget(pull.submission_id)
            elif report.outcome == "foreign_key":
                bound.warning("result_foreign_key")
                self.hooks.on_posted(pull.queue, False, "foreign_key")
                self.ledger.forget(pull.submission_id)
            elif report.outcome == "rejected":
                bound.error("result_rejected", detail=report.detail)
                self.hooks.on_posted(pull.queue, False, "rejected")
                self.ledger.forget(pull.submission_id)
            else:  # post_failed: never post twice; the lease brings it back
                bound.error("result_post_failed", detail=report.detail)
                self.hooks.on_posted(pull.queue, False, "error")
            return
        # No report: killed or crashed.
        kind = "timeout" if handle.killed_for == "timeout" else "child_died"
        self.hooks.on_infra_failure(pull.queue, kind)
        if handle.posting:
            # It may have posted: posting again could grade twice. The lease
            # expires and the server serves it again if it was not delivered.
            bound.error("child_died_while_posting", exit_code=handle.exit_code, killed_for=handle.killed_for)
            return
        bound.error("child_failed", kind=kind, exit_code=handle.exit_code,
                    seconds=round(seconds, 3), killed_for=handle.killed_for)
        if handle.killed_for == "shutdown":
            return  # forced shutdown: the lease brings it back
        self._retry_or_give_up(pull, kind)

    def _retry_or_give_up(self, pull: Pull, kind: str) -> None:
        attempts = self.ledger.count(pull.submission_id)
        if self.flags.draining:
            log.warning("retry_skipped_shutdown", submission_id=pull.submission_id, queue=pull.queue, kind=kind)
            return
        if attempts < self.settings.max_attempts:
            log.warning("job_retry", submission_id=pull.submission_id, queue=pull.queue,
                        kind=kind, attempt=attempts + 1, max_attempts=self.settings.max_attempts)
            self._fork(pull)
            return
        log.error("job_gave_up", submission_id=pull.submission_id, queue=pull.queue,
                  kind=kind, attempts=attempts)
        self._answer_could_not_grade(pull)

    def _answer_could_not_grade(self, pull: Pull) -> None:
        """The parent's only post: the standard could-not-grade answer."""
        try:
            result = self.client.put_result(pull.header_raw, GraderReply.could_not_grade())
        except Exception as exc:
            log.error("result_post_failed", submission_id=pull.submission_id, queue=pull.queue,
                      error=str(exc)[:300])
            self.hooks.on_posted(pull.queue, False, "error")
            return
        outcome, detail = classify_put(result)
        self.hooks.on_graded(pull.queue, "", "could_not_grade", 0.0)
        self.hooks.on_posted(pull.queue, outcome == "posted", "" if outcome == "posted" else outcome)
        log.info("could_not_grade_posted", submission_id=pull.submission_id, queue=pull.queue,
                 outcome=outcome, detail=detail)
        if outcome != "post_failed":
            self.ledger.forget(pull.submission_id)

    # -- helpers -------------------------------------------------------------
    def _login(self) -> bool:
        if not callable(getattr(self.client, "login", None)):
            return True  # a client that logs in lazily
        backoff = Backoff(self.settings.poll_min_s, self.settings.poll_max_s)
        while not self.flags.draining:
            self._tick()
            try:
                self.client.login()
                self.hooks.on_logged_in(True)
                log.info("logged_in", queue_url=self.settings.queue_url)
                return True
            except Exception as exc:
                self.hooks.on_logged_in(False)
                log.warning("login_failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")
            self._sleep(backoff.next_delay())
        return False

    def _sleep(self, seconds: float) -> None:
        fds = [self.signals.wake_r] if self.signals.wake_r >= 0 else []
        try:
            select.select(fds, [], [], seconds)
        except (InterruptedError, OSError, ValueError):
            pass
        self.signals.drain_wakeups() if fds else None

    def _report_queue_lengths(self) -> None:
        now = time.monotonic()
        if now < self._next_queuelen or not hasattr(self.client, "get_queuelen"):
            return
        self._next_queuelen = now + QUEUE_LENGTH_EVERY_S
        for queue in self.settings.queue_names:
            try:
                self.hooks.on_queue_length(queue, int(self.client.get_queuelen(queue)))
            except Exception as exc:
                log.debug("queuelen_failed", queue=queue, error=str(exc)[:200])

    def _check_backend(self) -> None:
        """Readiness: the backend's check() every BACKEND_CHECK_EVERY_S, in a
        helper thread that reports itself, so a hung check never stalls the
        loop (one overdue check reports not-ready)."""
        now = time.monotonic()
        running = self._backend_check
        if running is not None and not running.is_alive() and not self._check_seen:
            self._check_seen = True
            self._refresh_forker()
        if running is not None and running.is_alive():
            if now - self._backend_check_started > BACKEND_CHECK_TIMEOUT_S:
                self.hooks.on_backend_ready(False, "check timed out")
            return
        if now < self._next_backend_check:
            return
        self._next_backend_check = now + BACKEND_CHECK_EVERY_S

        def check() -> None:
            try:
                self.backend.check()
                self.hooks.on_backend_ready(True, "ok")
            except Exception as exc:
                detail = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.warning("sandbox_backend_unready", detail=detail)
                self.hooks.on_backend_ready(False, detail)

        self._backend_check_started = now
        self._check_seen = False
        self._backend_check = threading.Thread(target=check, daemon=True, name="backend-check")
        self._backend_check.start()

    def _refresh_forker(self) -> None:
        """After each backend check: a forker that died is replaced (children
        are forked here meanwhile), and so is one holding helpers the check
        restarted (a fork server that died); an old forker stays until the
        children it forked are reaped."""
        if not getattr(self.settings, "forker", True) or self.flags.draining:
            return
        current = [f for f in self.supervisor.forkers if f.alive and not f.retiring]
        if not current:
            log.info("forker_restarted", reason="the forker was lost")
            self._start_forker()
        elif self._backend_helpers() != self._helpers:
            log.info("forker_refreshed", reason="sandbox helpers restarted")
            self._start_forker()

    def _kill_everything(self, reason: str) -> None:
        self.supervisor.kill_all(reason)
        for handle in self.supervisor.wait_all(timeout=5.0):
            self._finished(handle)

    def _kill_sandboxes(self, handle: ChildHandle) -> None:
        """Containers or cgroups a killed job started are not in its process
        tree: ask the backend to kill them by label when it can."""
        kill_label = getattr(self.backend, "kill_label", None)
        if callable(kill_label):
            kill_label(handle.label)

    def _preload(self) -> None:
        """Import the grading path once in the parent so children inherit it."""
        try:
            from xgrader import pipeline
        except Exception as exc:
            log.warning("pipeline_import_failed", error=f"{type(exc).__name__}: {exc}")
            return
        # Assignments loaded (and validated) here, and expected values already
        # on disk, are inherited by every child: no re-reading per submission
        # (an edited assignment is still re-read: the registry checks mtimes).
        cache = pipeline.GradingCache(self.settings)
        self._safe(cache.preload, "grading_preload")
        self.grading_cache = cache

    def _safe(self, fn: Callable[[], Any], what: str) -> None:
        try:
            fn()
        except Exception as exc:
            log.warning(f"{what}_failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")


def _label_safe(sid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in sid)[:64]
