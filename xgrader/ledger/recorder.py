"""Recording graded submissions: :class:`LedgerHooks` implements
`Hooks.on_attempt` and writes each attempt to the ledger.

Where it runs: in the daemon, in the forked child after its report went to
the parent (the parent posts meanwhile: recording never delays a reply); in
push mode, likewise, after the child's report; in `batch` and `grade
--record`, after grading. A ledger that cannot be reached or written is
logged and reported through `on_ledger("error", ...)` (metrics count it);
the grade is never affected. Retention runs every PRUNE_EVERY attempts, from
the process that recorded it.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import structlog

from xgrader.hooks import Hooks, safe_call
from xgrader.ledger.db import describe
from xgrader.ledger.models import AttemptRecord
from xgrader.ledger.store import Ledger

if TYPE_CHECKING:
    from xgrader.config import LedgerSettings
    from xgrader.job import GradedSubmission

log = structlog.get_logger(__name__)

PRUNE_EVERY = 500


class LedgerHooks(Hooks):
    def __init__(self, settings: "LedgerSettings", report_to: Hooks | None = None) -> None:
        self.settings = settings
        self.report_to = report_to or Hooks()   # where on_ledger goes (the daemon's chain)
        self._ledger: Ledger | None = None
        self._schema_ok = False   # inherited by forked children: no migration check per child

    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.settings.url, max_file_bytes=self.settings.max_file_bytes,
                                  connect_timeout_s=self.settings.connect_timeout_s)
            self._ledger._migrated = self._schema_ok
        return self._ledger

    def prepare(self) -> bool:
        """At start-up (before forking): create or upgrade the schema, so the
        first submission finds it; an unusable store is logged, not fatal."""
        try:
            self.ledger().migrate()
            self._schema_ok = True
        except Exception as exc:
            log.error("ledger_unavailable", store=describe(self.settings.url), error=str(exc)[:300])
            return False
        finally:
            if self._ledger is not None:
                self._ledger.close()   # the connection must not be inherited by forked children
        return True

    def on_attempt(self, graded: "GradedSubmission") -> None:
        started = time.perf_counter()
        try:
            aid = self.ledger().record(AttemptRecord.from_graded(graded))
        except Exception as exc:   # never fails grading: logged and counted
            log.error("ledger_record_failed", store=describe(self.settings.url),
                      submission_id=graded.request.submission_id, error=f"{type(exc).__name__}: {str(exc)[:300]}")
            safe_call(self.report_to.on_ledger, "error", time.perf_counter() - started)
            return
        safe_call(self.report_to.on_ledger, "recorded", time.perf_counter() - started)
        days = self.settings.retention_days
        if days and aid % PRUNE_EVERY == 0:
            try:
                attempts, blobs = self.ledger().prune(days)
                log.info("ledger_pruned", attempts=attempts, blobs=blobs, retention_days=days, pid=os.getpid())
            except Exception as exc:
                log.error("ledger_prune_failed", error=str(exc)[:300])


def build(settings: "LedgerSettings", report_to: Hooks | None = None) -> LedgerHooks | None:
    return LedgerHooks(settings, report_to) if settings.enabled else None
