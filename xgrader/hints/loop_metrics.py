"""Prometheus metrics of the instructor loop, read from the hint store at
scrape time (ratings and escalations happen in the web pages, answers in
the dashboard or the CLI: the store is where they all meet). Every process
that exports them (daemon, push mode, serve-hints) reports the same
store-wide values: aggregate replicas with max(), not sum()."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import structlog
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily

from xgrader.hints.records import LoopStats

log = structlog.get_logger(__name__)

MAX_GROUPS = 500       # (assignment, hint type, model) label sets exported
LABELS = ["assignment", "hint_type", "model"]
NAMES = ("xgrader_hint_pages", "xgrader_hint_ratings", "xgrader_hint_helpful_ratio",
         "xgrader_hint_escalations", "xgrader_hint_escalations_waiting", "xgrader_hint_escalations_claimed",
         "xgrader_hint_escalation_oldest_open_seconds", "xgrader_hint_escalation_answer_seconds")


class HintLoopCollector:
    """A custom collector: `registry.register(HintLoopCollector(url))`."""

    def __init__(self, store_url: str, cache_s: float = 5.0, store: Any = None) -> None:
        self.store_url = store_url
        self.cache_s = cache_s
        self._store = store
        self._cached: tuple[float, LoopStats] | None = None
        self._lock = threading.Lock()

    def describe(self) -> list:
        return []   # no store read at registration: the store may be down then

    def _stats(self) -> LoopStats | None:
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self.cache_s:
                return self._cached[1]
            try:
                if self._store is None:
                    from xgrader.hints.store import open_store
                    self._store = open_store(self.store_url)
                stats = self._store.loop_stats()
            except Exception as exc:   # a scrape must not fail because the store is down
                log.warning("hint_metrics_unavailable", error=f"{type(exc).__name__}: {exc}"[:200])
                return None
            self._cached = (time.monotonic(), stats)
            return stats

    def collect(self) -> Iterator[Any]:
        stats = self._stats()
        if stats is None:
            return
        pages = GaugeMetricFamily("xgrader_hint_pages", "Delivered hints with a student page", labels=LABELS)
        ratings = GaugeMetricFamily("xgrader_hint_ratings", "Student ratings of delivered hints",
                                    labels=LABELS + ["rating"])
        ratio = GaugeMetricFamily("xgrader_hint_helpful_ratio", "Helpful ratings / all ratings", labels=LABELS)
        escalated = GaugeMetricFamily("xgrader_hint_escalations", "Hints sent to the course staff", labels=LABELS)
        answer = SummaryMetricFamily("xgrader_hint_escalation_answer_seconds",
                                     "Time from a student's question to the staff answer", labels=LABELS)
        for g in stats.groups[:MAX_GROUPS]:
            key = [g.assignment[:80], g.hint_type, g.model[:80]]
            pages.add_metric(key, g.delivered)
            ratings.add_metric(key + ["helpful"], g.helpful)
            ratings.add_metric(key + ["unhelpful"], g.unhelpful)
            if g.helpful_rate is not None:
                ratio.add_metric(key, g.helpful_rate)
            escalated.add_metric(key, g.escalated)
            answer.add_metric(key, count_value=g.answered, sum_value=g.answer_seconds)
        yield from (pages, ratings, ratio, escalated, answer)
        yield GaugeMetricFamily("xgrader_hint_escalations_waiting", "Questions nobody has claimed yet",
                                value=stats.waiting)
        yield GaugeMetricFamily("xgrader_hint_escalations_claimed", "Questions claimed, not answered yet",
                                value=stats.claimed)
        age = time.time() - stats.oldest_open_at if stats.oldest_open_at else 0.0
        yield GaugeMetricFamily("xgrader_hint_escalation_oldest_open_seconds",
                                "Age of the oldest unanswered question (0: none)", value=max(0.0, age))
