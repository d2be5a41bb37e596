"""Results the daemon already graded, by (submission id, body digest), so a
submission the server serves again (its put_result failed, maybe after the
server processed it; its lease ran out) gets the known result posted with
the new key instead of a second grading. In memory, bounded, with a TTL
longer than any server's lease (settings.result_cache_ttl_s).

Per replica by design: a re-serve that lands on another replica is graded
there once more (grading is deterministic, so the same result is posted);
sharing the cache would put a store on every submission's path for a case
that costs one grading.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownResult:
    reply: str                 # the GraderReply body as graded (score in points)
    max_score: float | None    # for the fraction form
    stored: float              # time.monotonic()


class ResultCache:
    def __init__(self, max_entries: int, ttl_s: float, clock=time.monotonic) -> None:
        self._entries: OrderedDict[tuple[str, str], KnownResult] = OrderedDict()
        self.max_entries, self.ttl_s, self._clock = max_entries, ttl_s, clock

    def put(self, ident: tuple[str, str], reply: str, max_score: float | None) -> None:
        if self.max_entries <= 0:
            return
        self._entries.pop(ident, None)
        self._entries[ident] = KnownResult(reply, max_score, self._clock())
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, ident: tuple[str, str]) -> KnownResult | None:
        known = self._entries.get(ident)
        if known is None:
            return None
        if self._clock() - known.stored > self.ttl_s:
            del self._entries[ident]
            return None
        return known

    def __len__(self) -> int:
        return len(self._entries)
