"""Extension points: small classes of typed no-op hooks (dramatiq-style).

The daemon, pipeline and sandboxes call these; metrics and health implement
them. A hook must never raise into grading: callers wrap them with
:func:`safe_call`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

import structlog

if TYPE_CHECKING:
    from xgrader.job import GradedSubmission

log = structlog.get_logger(__name__)


class Hooks:
    """All methods are no-ops; subclass and override what you need."""

    def on_pulled(self, queue: str, submission_id: str) -> None: ...

    def on_graded(self, queue: str, assignment: str, outcome: str, seconds: float) -> None: ...

    def on_phase(self, queue: str, phase: str, seconds: float) -> None:
        """phase: fetch | sandbox_start | run | post (and others a pipeline reports)."""

    def on_posted(self, queue: str, accepted: bool, reason: str = "") -> None:
        """accepted=False with reason 'foreign_key' when another grader owns the pull."""

    def on_infra_failure(self, queue: str, kind: str) -> None:
        """kind: sandbox_start | handler_crash | timeout | child_died | ..."""

    def on_sandbox_failure(self, backend: str, kind: str) -> None: ...

    def on_client_error(self, kind: str) -> None:
        """kind: connect | timeout | http_5xx | bad_envelope | ..."""

    def on_relogin(self) -> None: ...

    def on_queue_length(self, queue: str, length: int) -> None: ...

    def on_in_flight(self, queue: str, count: int) -> None: ...

    def on_loop_progress(self) -> None:
        """Called every pull-loop iteration (liveness)."""

    def on_logged_in(self, ok: bool, detail: str = "") -> None:
        """detail: why not (the server's refusal, or the connection error)."""

    def on_backend_ready(self, ok: bool, detail: str = "") -> None:
        """The sandbox backend's check() result (readiness)."""

    def on_queue_served(self, queue: str, ok: bool, reason: str = "", detail: str = "") -> None:
        """Whether the daemon is serving `queue`; reason when not:
        unknown_queue | login | backend | unreachable."""

    def on_pull(self, queue: str, result: str) -> None:
        """A get_submission: work | empty | in_flight (a re-serve of one being
        graded) | cached (its known result re-posted) | poison | error."""

    def on_busy(self, queue: str, seconds: float) -> None:
        """Slot-seconds spent grading (in-flight jobs x elapsed time)."""

    def on_slots(self, queue: str, count: int) -> None:
        """Grading slots this process has for the queue (its concurrency)."""

    def on_reposted(self, queue: str) -> None:
        """A known result posted again for a re-served submission."""

    def on_put_failed(self, queue: str, status: str) -> None:
        """put_result not answered with an xqueue reply: an HTTP status,
        `connection` or `timeout` (maybe processed: never resent)."""

    def on_poison(self, queue: str, reason: str) -> None:
        """A submission answered "could not be graded"; reason: the failure
        kind counted most."""

    def on_hint(self, outcome: str, seconds: float, tokens: int = 0) -> None:
        """outcome: delivered | guard_rejected | timeout | quota | error | cached | disabled"""

    def on_attempt(self, graded: "GradedSubmission") -> None:
        """A submission was graded and its reply is on its way (posted, or
        handed to the parent that posts it). Runs where it is called, also in
        a forked child (see IN_PLACE_HOOKS): the child alone holds the files
        and the full report. Implementations must not delay a reply: callers
        call it after the reply is out. The attempt ledger implements it."""

    def on_ledger(self, outcome: str, seconds: float) -> None:
        """An attempt's recording: outcome recorded | error (the store was
        unusable; grading went on)."""


MAX_CHILD_EVENTS = 500  # keeps a child's report message well under the pipe buffer cap
# Hooks a forked child runs itself instead of buffering them for the parent:
# their arguments (a submission's files and report) stay in the child.
IN_PLACE_HOOKS = frozenset({"on_attempt"})


class HookChain(Hooks):
    """Calls every hook in order; one failing hook is logged, never raised.

    Called in a forked child (a different pid than the one that built the
    chain), hook calls are buffered instead: the child's copy of the metrics
    registry dies with it. The child ships :meth:`take_child_events` to the
    parent in its report and the parent calls :meth:`replay`."""

    def __init__(self, *hooks: Hooks) -> None:
        self._hooks = hooks
        self._pid = os.getpid()
        self._child_events: list[list[Any]] = []

    def __getattribute__(self, name: str):  # type: ignore[override]
        if name.startswith("on_"):
            hooks = object.__getattribute__(self, "_hooks")
            if os.getpid() != object.__getattribute__(self, "_pid") and name not in IN_PLACE_HOOKS:
                events = object.__getattribute__(self, "_child_events")

                def record(*args, **kwargs) -> None:
                    if len(events) < MAX_CHILD_EVENTS:
                        events.append([name, list(args), dict(kwargs)])

                return record

            def fan_out(*args, **kwargs) -> None:
                for hook in hooks:
                    safe_call(getattr(hook, name), *args, **kwargs)

            return fan_out
        return object.__getattribute__(self, name)

    def take_child_events(self) -> list[list[Any]]:
        """In a forked child: the buffered hook calls, as JSON-able
        [name, args, kwargs] triples (the buffer is emptied)."""
        events = object.__getattribute__(self, "_child_events")
        taken = list(events)
        events.clear()
        return taken

    def replay(self, events: list[Any]) -> None:
        """In the parent: call the hooks a child recorded. Unknown names and
        malformed entries are skipped (a child is not trusted to be sane)."""
        for event in events or ():
            try:
                name, args, kwargs = event
                if not (isinstance(name, str) and name.startswith("on_") and hasattr(Hooks, name)
                        and name not in IN_PLACE_HOOKS):
                    continue
                getattr(self, name)(*args, **kwargs)
            except (TypeError, ValueError):
                log.warning("hook_event_invalid", entry=str(event)[:200])


def safe_call(fn: Callable[..., None], *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception:  # a metrics bug must not cost a grade
        log.exception("hook_failed", hook=getattr(fn, "__qualname__", repr(fn)))
