"""Per-submission attempt counts that survive re-serves (bounded memory), so a
poison submission that keeps killing children is eventually answered."""

from __future__ import annotations

from collections import OrderedDict


class AttemptLedger:
    def __init__(self, max_entries: int = 10_000) -> None:
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._max = max_entries

    def count(self, submission_id: str) -> int:
        return self._counts.get(submission_id, 0)

    def add(self, submission_id: str) -> int:
        n = self._counts.pop(submission_id, 0) + 1
        self._counts[submission_id] = n
        while len(self._counts) > self._max:
            self._counts.popitem(last=False)
        return n

    def forget(self, submission_id: str) -> None:
        self._counts.pop(submission_id, None)
