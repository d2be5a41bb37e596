"""The parent: pull round-robin, fork a child per submission, supervise,
answer what the children could not.

The parent parses only layers 1-2 of a pull (id and key), never runs job
code, and posts the one put_result of each pull over its kept-alive
connection: the reply body a child reported (outcome "graded"), or
could-not-grade when grading failures exhausted `max_attempts`. A child
that died before reporting is retried (bounded); a report is posted once,
never retried after the server may have taken it.

What a pull is decides what happens to it (:meth:`Daemon._accept`):
- the same submission (id and body) already being graded here: not graded
  again and not counted (edx-submissions serves an unanswered pull again,
  with the same key, once its lease ran out; legacy xqueue with a new key,
  which the grading in flight then posts with);
- a submission graded here before (its put_result failed, maybe after the
  server processed it): the known result is posted again with the new key
  (results.py), without grading;
- one whose gradings failed `max_attempts` times (ledger.py): "could not be
  graded", with the reasons;
- else a new grading in a forked child.
Only grading failures count as attempts: a failed put_result, a re-pull or
a rejected key never make a submission poison.

The score is posted as the server expects it: points (legacy xqueue) or a
fraction of the maximum (edx-submissions), per queue (`score_format`,
`auto` by the form of the submission keys, logged).

Pulling waits for readiness: logged in (a login the server refuses
`login_max_refusals` times in a row exits 3; an unreachable server is
retried forever), and the sandbox backend's check passing (failing for
`backend_unready_exit_s` exits 4); each with one clear error line. A queue
the server does not know is reported (/readyz, xgrader_queue_served) and
tried again now and then.

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
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import requests
import structlog

from xgrader.daemon.backoff import Backoff
from xgrader.daemon.child import JobContext, classify_put, fresh_connections, grade_and_report
from xgrader.daemon.ledger import AttemptLedger
from xgrader.daemon.messages import Reporter
from xgrader.daemon.results import ResultCache
from xgrader.daemon.signals import SignalState
from xgrader.daemon.supervisor import ChildHandle, Supervisor
from xgrader.daemon.watchdog import StallWatchdog
from xgrader.hooks import Hooks, HookChain
from xgrader.logs import clip
from xgrader.wire import GraderReply, PayloadError, body_digest, key_kind, parse_header

if TYPE_CHECKING:
    from xgrader.config import Settings

log = structlog.get_logger(__name__)

JobFn = Callable[[JobContext, Reporter], None]

EXIT_OK = 0
EXIT_FORCED = 1          # second signal, or in-flight jobs outlived the grace period
EXIT_LOGIN_REFUSED = 3   # the queue refused the login login_max_refusals times in a row
EXIT_BACKEND_UNUSABLE = 4  # the sandbox backend's check failed for backend_unready_exit_s
QUEUE_LENGTH_EVERY_S = 10.0
BACKEND_CHECK_EVERY_S = 30.0   # readiness: the sandbox backend still starts
BACKEND_RETRY_S = 5.0          # ... and while it does not
BACKEND_CHECK_TIMEOUT_S = 20.0
LOGIN_REFUSED_RETRY_S = 5.0    # between logins the server refused
UNKNOWN_QUEUE_RETRY_S = 30.0   # a queue the server does not know is asked again after this
MAX_WAIT_S = 0.5         # select() cap: signals and deadlines are seen within this
READY_PAUSE_S = 5.0      # no ready children for this long after one failed
LEASE_EDX_SUBMISSIONS_S = 300.0
LEASE_XQUEUE_S = 60.0


@dataclass
class Pull:
    queue: str
    content: str
    header_raw: str
    submission_id: str
    key: str
    digest: str      # body_digest: the same submission across re-serves
    label: str
    score_format: str = "points"   # how this pull's score is posted: points | fraction
    tries: int = 0   # forks for this pull
    post_outcome: tuple[str, str] | None = None   # set once the parent posted (or tried)
    holds_slot: bool = False   # counted in in_flight: its child has not given its final word yet

    @property
    def ident(self) -> tuple[str, str]:
        return self.submission_id, self.digest


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
        self.results = ResultCache(settings.result_cache_size, settings.result_cache_ttl_s)
        self.active: dict[tuple[str, str], Pull] = {}   # being graded here, by (id, body digest)
        self.backoff = Backoff(settings.poll_min_s, settings.poll_max_s)
        self.watchdog = StallWatchdog(settings.stall_timeout_s) if watchdog else None
        self.in_flight: dict[str, int] = {q: 0 for q in settings.queue_names}
        self._rr = 0
        self._next_queuelen = 0.0
        self._queuelen_supported = True
        self._unknown: dict[str, float] = {}   # queue -> when to ask the server again
        self._served: dict[str, bool] = {}
        self._score_formats: dict[str, str] = {}   # queue -> the format last logged
        self._logged_in = False
        self._login_refusals = 0
        self._next_login = 0.0
        self._login_backoff = Backoff(settings.poll_min_s, settings.poll_max_s)
        self._backend_ok: bool | None = None   # the last check's answer
        self._backend_bad_since: float | None = None
        self._next_backend_check = 0.0
        self._backend_check: threading.Thread | None = None
        self._backend_check_started = 0.0
        self._backend_result: tuple[bool, str] | None = None   # set by the check thread
        self._exit_code: int | None = None
        self._busy_at = time.monotonic()
        self._idle_until = 0.0
        self._drain_deadline: float | None = None
        # Children forked ahead of their job: one per slot by default.
        self.ready_target = (settings.concurrency * len(settings.queue_names)
                             if ready_children is None else ready_children)
        self._ready_seq = 0
        self._ready_paused_until = 0.0
        self.grading_cache: Any = None   # pipeline.GradingCache, filled by _preload
        self._helpers: tuple = ()        # the backend's helpers the forker was forked with

    # -- public --------------------------------------------------------------
    @property
    def flags(self):
        return self.signals.flags

    @property
    def draining(self) -> bool:
        """Stopping: a signal, or a fatal condition (login refused, backend unusable)."""
        return self.flags.draining or self._exit_code is not None

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
            for queue in self.settings.queue_names:
                self.hooks.on_slots(queue, self.settings.concurrency)
            if not self._start_up():
                if self._exit_code is not None:
                    return self._exit_code
                return EXIT_OK if not self.flags.hard_stop else EXIT_FORCED
            self._check_lease()
            self._start_forker()
            return self._loop()
        except BaseException:
            # A bug in the loop: take the children down with us (their leases
            # expire; nothing is lost) and let the process supervisor restart.
            log.exception("daemon_crashed", in_flight=self._grading())
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

    # -- start-up ------------------------------------------------------------
    def _start_up(self) -> bool:
        """Until the sandbox backend's check passes and the queue accepts the
        login: nothing is pulled before both. False: stop (a signal, or a
        fatal condition already logged)."""
        while not self.draining:
            self._tick()
            if self._backend_ok is not True and time.monotonic() >= self._next_backend_check:
                self._check_backend_now()
            if not self._logged_in and time.monotonic() >= self._next_login:
                self._try_login()
            if self._backend_ok and self._logged_in:
                return True
            if self.draining:
                break
            self._sleep(max(0.0, min(self._next_login if not self._logged_in else float("inf"),
                                     self._next_backend_check if not self._backend_ok else float("inf"))
                            - time.monotonic()))
        return False

    def _try_login(self) -> None:
        """One login attempt (see :meth:`_not_logged_in` for a failed one)."""
        if not callable(getattr(self.client, "login", None)):
            self._logged_in = True   # a client that logs in lazily
            return
        try:
            self.client.login()
        except Exception as exc:
            self._not_logged_in(exc)
            return
        self._logged_in = True
        self._login_backoff.reset()
        if not self._login_refusals:
            # After refusals, ready only once a call is accepted: a login can
            # succeed for a user the server then refuses everything
            # (edx-submissions: not in the xqueue group).
            self.hooks.on_logged_in(True)
        log.info("logged_in", queue_url=self.settings.queue_url,
                 server=getattr(self.client, "flavor", None) or "unknown")

    def _not_logged_in(self, exc: Exception) -> None:
        """A login failed, or a call was refused even after logging in again.
        Not ready at once. A refusal by the server counts toward
        login_max_refusals (then exit 3), tried again LOGIN_REFUSED_RETRY_S
        later; anything else (connection refused, 5xx) is transient and
        retried with backoff, forever."""
        detail = clip(f"{type(exc).__name__}: {exc}", 300)
        self._logged_in = False
        self.hooks.on_logged_in(False, detail)
        for queue in self.settings.queue_names:
            self._set_served(queue, False, "login", detail)
        if not getattr(exc, "refused", False):
            log.warning("login_failed", error=detail)
            self._next_login = time.monotonic() + self._login_backoff.next_delay()
            return
        self._login_refusals += 1
        log.warning("login_refused", error=detail, refusals=self._login_refusals,
                    max_refusals=self.settings.login_max_refusals)
        self._next_login = time.monotonic() + LOGIN_REFUSED_RETRY_S
        if self._login_refusals >= self.settings.login_max_refusals:
            self._fatal(EXIT_LOGIN_REFUSED, "login_refused_giving_up",
                        f"the queue refused the login {self._login_refusals} times in a row "
                        f"(last: {detail}); check XGRADER_QUEUE_USER / XGRADER_QUEUE_PASSWORD")

    def _fatal(self, code: int, event: str, message: str) -> None:
        """One clear error line, then stop like a SIGTERM (in-flight jobs may
        finish) and exit with `code`."""
        if self._exit_code is None:
            self._exit_code = code
            log.error(event, error=message, exit_code=code)

    def _check_lease(self) -> None:
        """A job that outlives the server's lease is served again meanwhile
        (to another grader, or, on edx-submissions, to this one with the
        same key): keep job_timeout_s below it."""
        flavor = getattr(self.client, "flavor", None)
        lease = self.settings.queue_lease_s
        source = "XGRADER_QUEUE_LEASE_S"
        if lease is None:
            lease = LEASE_EDX_SUBMISSIONS_S if flavor == "edx-submissions" else LEASE_XQUEUE_S
            source = f"{flavor or 'xqueue'} default"
        if self.settings.job_timeout_s >= lease:
            log.warning("job_timeout_exceeds_lease", job_timeout_s=self.settings.job_timeout_s,
                        lease_s=lease, lease_from=source,
                        detail="a submission still being graded when its lease ends is served again; "
                               "set XGRADER_JOB_TIMEOUT_S below the lease (or XGRADER_QUEUE_LEASE_S "
                               "to the server's real lease)")
        if self.settings.result_cache_size and self.settings.result_cache_ttl_s <= lease:
            log.warning("result_cache_ttl_below_lease", result_cache_ttl_s=self.settings.result_cache_ttl_s,
                        lease_s=lease, lease_from=source,
                        detail="a submission served again after its lease would be graded again; "
                               "set XGRADER_RESULT_CACHE_TTL_S above the lease")

    # -- main loop -----------------------------------------------------------
    def _loop(self) -> int:
        while True:
            self._tick()
            if self.flags.hard_stop:
                log.warning("shutdown_forced", in_flight=self._grading())
                self._kill_everything("shutdown")
                return EXIT_FORCED
            if self.draining:
                if self._drain_deadline is None:
                    self.supervisor.retire_ready()
                    self._drain_deadline = time.monotonic() + self.settings.shutdown_grace_s
                    log.info("shutdown_draining", in_flight=self._grading(),
                             grace_s=self.settings.shutdown_grace_s)
                if not self.supervisor.children:
                    log.info("shutdown_complete")
                    return self._exit_code if self._exit_code is not None else EXIT_OK
                if time.monotonic() >= self._drain_deadline:
                    log.warning("shutdown_grace_expired", in_flight=self._grading())
                    self._kill_everything("shutdown")
                    return self._exit_code if self._exit_code is not None else EXIT_FORCED
            else:
                self._check_backend()
                if not self._logged_in and time.monotonic() >= self._next_login:
                    self._try_login()
                if self._ready_to_pull():
                    self._report_queue_lengths()
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
        now = time.monotonic()
        elapsed, self._busy_at = now - self._busy_at, now
        for queue, count in self.in_flight.items():
            if count:
                self.hooks.on_busy(queue, count * elapsed)

    def _grading(self) -> int:
        """Jobs being graded (ready children waiting for work are not)."""
        return sum(self.in_flight.values())

    def _ready_to_pull(self) -> bool:
        return self._logged_in and self._backend_ok is True and not self.draining

    def _wait(self) -> None:
        """Sleep until a child speaks or exits, a signal arrives, a deadline or
        the idle backoff passes."""
        now = time.monotonic()
        until = [now + MAX_WAIT_S]
        if self._idle_until > now and not self.draining:
            until.append(self._idle_until)
        elif self._has_free_slot() and self._ready_to_pull():
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
        """One pull per queue with a free slot, starting at a rotating queue.
        True when a pull brought something to answer (more may be waiting)."""
        queues = self.settings.queue_names
        got = False
        for i in range(len(queues)):
            queue = queues[(self._rr + i) % len(queues)]
            if self.draining or not self._logged_in or self.in_flight[queue] >= self.settings.concurrency:
                continue
            if self._unknown.get(queue, 0.0) > time.monotonic():
                continue
            result = self._pull(queue)
            self.hooks.on_pull(queue, result)
            got = got or result in ("work", "cached", "poison")
        self._rr = (self._rr + 1) % max(1, len(queues))
        return got

    def _pull(self, queue: str) -> str:
        try:
            content = self.client.get_submission(queue)
        except Exception as exc:  # a dead queue server: back off, keep going
            detail = clip(f"{type(exc).__name__}: {exc}", 300)
            kind = getattr(exc, "kind", "")
            if kind == "unknown_queue":
                self._mark_unknown(queue, str(exc))
            elif kind == "login":
                self._not_logged_in(exc)
            else:
                log.warning("pull_failed", queue=queue, error=detail)
                self._set_served(queue, False, "unreachable", detail)
            return "error"
        if self._login_refusals:
            self._login_refusals = 0
            self.hooks.on_logged_in(True)
        self._unknown.pop(queue, None)
        self._set_served(queue, True)
        if content is None:
            return "empty"
        return self._accept(queue, content)

    def _mark_unknown(self, queue: str, detail: str) -> None:
        self._unknown[queue] = time.monotonic() + UNKNOWN_QUEUE_RETRY_S
        self._set_served(queue, False, "unknown_queue", clip(detail, 300))

    def _set_served(self, queue: str, ok: bool, reason: str = "", detail: str = "") -> None:
        state = (ok, reason)
        if self._served.get(queue) == state:
            return
        self._served[queue] = state
        self.hooks.on_queue_served(queue, ok, reason, detail)
        if ok:
            log.info("queue_served", queue=queue)
        elif reason == "unknown_queue":
            log.error("queue_unknown", queue=queue, error=detail,
                      detail="check XGRADER_QUEUE_NAMES; asked again every "
                             f"{UNKNOWN_QUEUE_RETRY_S:.0f} s")

    def _accept(self, queue: str, content: str) -> str:
        try:
            header_raw, header = parse_header(content)
        except PayloadError as exc:
            # Without a key nobody can answer it; the lease will bring it back.
            log.error("payload_error", queue=queue, layer=exc.layer, error=exc.detail,
                      submission_id=exc.submission_id)
            return "error"
        sid, key = str(header.submission_id), str(header.submission_key)
        ident = (sid, body_digest(content))
        grading = self.active.get(ident)
        if grading is not None:
            # Served again while being graded here (its lease ran out): not a
            # second grading, not an attempt. A new key (legacy xqueue) is the
            # one the grading in flight will post with.
            new_key = key != grading.key
            if new_key:
                grading.header_raw, grading.key = header_raw, key
            log.info("served_again_while_grading", submission_id=sid, queue=queue, new_key=new_key)
            return "in_flight"
        self.hooks.on_pulled(queue, sid)
        pull = Pull(queue=queue, content=content, header_raw=header_raw, submission_id=sid, key=key,
                    digest=ident[1], label=f"xg-{os.getpid()}-{_label_safe(sid)}",
                    score_format=self._score_format(queue, key))
        known = self.results.get(ident)
        if known is not None:
            self._repost(pull, known)
            return "cached"
        if self.ledger.count(ident) >= self.settings.max_attempts:
            self._answer_could_not_grade(pull)
            return "poison"
        self.active[ident] = pull
        self._fork(pull)
        return "work"

    def _score_format(self, queue: str, key: str) -> str:
        """points | fraction for a pull: the setting, or (auto) what the
        submission key says about the server; logged when it changes."""
        setting = self.settings.score_format_for(queue)
        flavor = getattr(self.client, "flavor", None)
        if setting != "auto":
            chosen, why = setting, "set by XGRADER_SCORE_FORMAT(S)"
        elif key_kind(key) == "uuid":
            chosen, why = "fraction", "36-character UUID submission keys: edx-submissions"
        elif key_kind(key) == "hex32":
            chosen, why = "points", "32-hex submission keys: xqueue"
        elif flavor == "edx-submissions":
            chosen, why = "fraction", "login/ answered like edx-submissions"
        else:
            chosen, why = "points", "login/ answered like xqueue"
        if self._score_formats.get(queue) != chosen:
            self._score_formats[queue] = chosen
            log.info("score_format", queue=queue, score_format=chosen, setting=setting, reason=why,
                     server=flavor or "unknown", queue_length=self._queuelen_supported)
        return chosen

    def _fork(self, pull: Pull) -> None:
        pull.tries += 1
        if pull.post_outcome is not None and pull.post_outcome[0] == "bad_reply":
            pull.post_outcome = None  # nothing was posted: the retry may post
        attempt = self.ledger.count(pull.ident) + 1
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
            log.warning("forker_start_failed", error=clip(exc, 200))
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
                log.warning("ready_child_fork_failed", error=clip(exc, 200))
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
        except ValueError as exc:  # a child's bug, not the student's: a grading failure, retried
            pull.post_outcome = ("bad_reply", clip(exc, 300))
            return
        # Known from now on: a re-serve (the post below fails, maybe after the
        # server took it) gets this result again, not a second grading.
        self.results.put(pull.ident, reply.to_body(), report.max_score)
        pull.post_outcome = ("post_failed", "not answered")  # set before: a crash mid-post never re-posts
        pull.post_outcome = self._put(pull, reply, report.max_score)
        self.active.pop(pull.ident, None)

    def _put(self, pull: Pull, reply: GraderReply, max_score: float | None) -> tuple[str, str]:
        """One put_result in the pull's score form. Returns (outcome, detail):
        posted | foreign_key | rejected | post_failed (maybe processed: never
        resent; the server serves it again after the lease if it did not
        take it, and the known result is posted then)."""
        body = reply.as_fraction(max_score) if pull.score_format == "fraction" else reply
        started = time.perf_counter()
        try:
            outcome = classify_put(self.client.put_result(pull.header_raw, body))
        except Exception as exc:
            self.hooks.on_put_failed(pull.queue, _failure_status(exc))
            outcome = ("post_failed", clip(f"{type(exc).__name__}: {exc}", 300))
        self.hooks.on_phase(pull.queue, "post", time.perf_counter() - started)
        return outcome

    def _repost(self, pull: Pull, known: Any) -> None:
        """A submission graded here before, served again: its result with the new key."""
        outcome, detail = self._put(pull, GraderReply.model_validate_json(known.reply), known.max_score)
        self.hooks.on_reposted(pull.queue)
        self._count_post(pull.queue, outcome)
        log.info("result_reposted", submission_id=pull.submission_id, queue=pull.queue, outcome=outcome,
                 detail=detail)

    def _count_post(self, queue: str, outcome: str) -> None:
        reason = {"posted": "", "post_failed": "error"}.get(outcome, outcome)
        self.hooks.on_posted(queue, outcome == "posted", reason)

    def _finished(self, handle: ChildHandle) -> None:
        if not handle.assigned:
            if handle.exit_code not in (0, None) and handle.killed_for is None and not self.draining:
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
            if report.outcome != "graded":
                kind = report.infra_kind or "infra" if report.outcome == "infra" else f"report_{report.outcome}"
                self._failed(pull, kind, report.detail)
                return
            self._post_reply(pull, report)
            outcome, detail = pull.post_outcome or ("post_failed", "")
            if outcome == "bad_reply":
                self._failed(pull, "bad_reply", detail)
                return
            self.ledger.forget(pull.ident)   # graded: earlier failures no longer matter
            if report.grade_outcome:
                self.hooks.on_graded(pull.queue, report.assignment, report.grade_outcome, seconds)
            self._count_post(pull.queue, outcome)
            if outcome == "foreign_key":
                bound.warning("result_foreign_key")
            elif outcome == "rejected":
                bound.error("result_rejected", detail=detail)
            elif outcome == "post_failed":
                # Never posted twice: the server serves it again after the
                # lease if it did not take it, and the known result goes then.
                bound.warning("result_post_failed", detail=detail)
            return
        # No report: killed or crashed.
        kind = "timeout" if handle.killed_for == "timeout" else "child_died"
        bound.error("child_failed", kind=kind, exit_code=handle.exit_code,
                    seconds=round(seconds, 3), killed_for=handle.killed_for)
        if handle.killed_for == "shutdown":
            self.hooks.on_infra_failure(pull.queue, kind)
            self.active.pop(pull.ident, None)
            return  # forced shutdown: not the submission's fault; the lease brings it back
        self._failed(pull, kind, f"exit code {handle.exit_code}")

    def _failed(self, pull: Pull, kind: str, detail: str = "") -> None:
        """A grading failure: counted (the only thing that counts), then
        graded again, or answered "could not be graded" after max_attempts."""
        self.hooks.on_infra_failure(pull.queue, kind)
        attempts = self.ledger.add(pull.ident, kind)
        if self.draining:
            log.warning("retry_skipped_shutdown", submission_id=pull.submission_id, queue=pull.queue, kind=kind)
            self.active.pop(pull.ident, None)
            return
        if attempts < self.settings.max_attempts:
            log.warning("job_retry", submission_id=pull.submission_id, queue=pull.queue, kind=kind,
                        detail=clip(detail, 300), attempt=attempts + 1, max_attempts=self.settings.max_attempts)
            self._fork(pull)
            return
        self._answer_could_not_grade(pull)

    def _answer_could_not_grade(self, pull: Pull) -> None:
        """The parent's own answer: xqueue's standard could-not-grade reply,
        after max_attempts grading failures (the reasons are logged)."""
        reasons = self.ledger.reasons(pull.ident)
        reason = Counter(reasons).most_common(1)[0][0] if reasons else "unknown"
        log.error("poison_submission", submission_id=pull.submission_id, queue=pull.queue,
                  attempts=self.ledger.count(pull.ident), reasons=reasons)
        self.hooks.on_poison(pull.queue, reason)
        outcome, detail = self._put(pull, GraderReply.could_not_grade(), None)
        self.active.pop(pull.ident, None)
        self.hooks.on_graded(pull.queue, "", "could_not_grade", 0.0)
        self._count_post(pull.queue, outcome)
        log.info("could_not_grade_posted", submission_id=pull.submission_id, queue=pull.queue,
                 outcome=outcome, detail=detail)
        if outcome != "post_failed":
            self.ledger.forget(pull.ident)

    # -- helpers -------------------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        fds = [self.signals.wake_r] if self.signals.wake_r >= 0 else []
        try:
            select.select(fds, [], [], seconds)
        except (InterruptedError, OSError, ValueError):
            pass
        self.signals.drain_wakeups() if fds else None

    def _report_queue_lengths(self) -> None:
        now = time.monotonic()
        if now < self._next_queuelen or not self._queuelen_supported \
                or not hasattr(self.client, "get_queuelen"):
            return
        self._next_queuelen = now + QUEUE_LENGTH_EVERY_S
        for queue in self.settings.queue_names:
            if queue in self._unknown:
                continue
            try:
                length = self.client.get_queuelen(queue)
            except Exception as exc:
                kind = getattr(exc, "kind", "")
                if kind == "not_found":
                    self._queuelen_supported = False
                    log.info("queue_length_unsupported", error=clip(exc, 200),
                             detail="the server has no get_queuelen/ (edx-submissions): not asked again; "
                                    "xgrader_slot_busy_seconds_total and xgrader_pulls_total are the "
                                    "scaling signals")
                    return
                if kind == "unknown_queue":
                    self._mark_unknown(queue, str(exc))
                else:
                    log.debug("queuelen_failed", queue=queue, error=clip(exc, 200))
                continue
            if length is not None:
                self.hooks.on_queue_length(queue, int(length))

    # -- the sandbox backend's readiness ----------------------------------------
    def _start_backend_check(self) -> None:
        self._backend_result = None

        def check() -> None:
            try:
                self.backend.check()
                self._backend_result = (True, "ok")
            except Exception as exc:
                self._backend_result = (False, clip(f"{type(exc).__name__}: {exc}", 300))

        self._backend_check_started = time.monotonic()
        self._backend_check = threading.Thread(target=check, daemon=True, name="backend-check")
        self._backend_check.start()

    def _check_backend_now(self) -> None:
        """At start-up: one check, waited for (bounded, signals seen)."""
        if self._backend_check is None or not self._backend_check.is_alive():
            self._start_backend_check()
        end = self._backend_check_started + BACKEND_CHECK_TIMEOUT_S
        while self._backend_check.is_alive() and time.monotonic() < end and not self.draining:
            self._backend_check.join(min(MAX_WAIT_S, max(0.0, end - time.monotonic())))
            self._tick()
        if self._backend_check.is_alive():
            self._backend_checked(False, "check timed out")
        else:
            self._backend_check = None
            self._backend_checked(*(self._backend_result or (False, "check gave no answer")))

    def _check_backend(self) -> None:
        """In the loop: the backend's check() every BACKEND_CHECK_EVERY_S
        (BACKEND_RETRY_S while it fails), in a helper thread, so a hung
        check never stalls the loop (an overdue one counts as failed)."""
        now = time.monotonic()
        running = self._backend_check
        if running is not None:
            if running.is_alive():
                if now - self._backend_check_started > BACKEND_CHECK_TIMEOUT_S:
                    self._backend_checked(False, "check timed out")
                return
            self._backend_check = None
            self._backend_checked(*(self._backend_result or (False, "check gave no answer")))
            self._refresh_forker()
            return
        if now >= self._next_backend_check:
            self._start_backend_check()

    def _backend_checked(self, ok: bool, detail: str) -> None:
        """A check's answer: pulling waits while it fails, and a backend that
        stays unusable for backend_unready_exit_s stops the daemon (exit 4)."""
        now = time.monotonic()
        self.hooks.on_backend_ready(ok, detail)
        if ok:
            if self._backend_ok is False:
                log.info("sandbox_backend_ready")
            self._backend_ok, self._backend_bad_since = True, None
            self._next_backend_check = now + BACKEND_CHECK_EVERY_S
            return
        if self._backend_ok is not False:
            log.warning("sandbox_backend_unready", detail=detail,
                        exit_after_s=self.settings.backend_unready_exit_s)
        self._backend_ok = False
        self._backend_bad_since = self._backend_bad_since or now
        self._next_backend_check = now + BACKEND_RETRY_S
        for queue in self.settings.queue_names:
            self._set_served(queue, False, "backend", detail)
        if now - self._backend_bad_since >= self.settings.backend_unready_exit_s:
            self._fatal(EXIT_BACKEND_UNUSABLE, "sandbox_backend_unusable",
                        f"the sandbox backend has failed its check for {now - self._backend_bad_since:.0f} s "
                        f"(last: {detail}); nothing was pulled meanwhile")

    def _refresh_forker(self) -> None:
        """After each backend check: a forker that died is replaced (children
        are forked here meanwhile), and so is one holding helpers the check
        restarted (a fork server that died); an old forker stays until the
        children it forked are reaped."""
        if not getattr(self.settings, "forker", True) or self.draining:
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
            log.warning(f"{what}_failed", error=clip(f"{type(exc).__name__}: {exc}", 200))


def _failure_status(exc: BaseException) -> str:
    """How a put_result failed, for xgrader_put_result_failures_total."""
    status = getattr(exc, "status", None)
    if status:
        return str(status)
    if isinstance(exc, requests.Timeout):
        return "timeout"
    if isinstance(exc, requests.ConnectionError):
        return "connection"
    return getattr(exc, "kind", "") or "error"


def _label_safe(sid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in sid)[:64]
