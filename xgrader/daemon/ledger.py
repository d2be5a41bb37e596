"""Grading failures per submission (a child that crashed, timed out, could
not start its sandbox, or reported an infrastructure failure), kept across
re-serves in bounded memory, so a poison submission is eventually answered
"could not be graded" with the reasons. Only grading failures count: a
failed put_result, a re-pull or a rejected key are not attempts."""

from __future__ import annotations

from collections import OrderedDict

MAX_REASONS = 10   # the latest kept for the log; the count is exact


class AttemptLedger:
    def __init__(self, max_entries: int = 10_000) -> None:
        self._failures: OrderedDict[tuple[str, str], tuple[int, list[str]]] = OrderedDict()
        self._max = max_entries

    def count(self, ident: tuple[str, str]) -> int:
        return self._failures.get(ident, (0, []))[0]

    def reasons(self, ident: tuple[str, str]) -> list[str]:
        return list(self._failures.get(ident, (0, []))[1])

    def add(self, ident: tuple[str, str], reason: str) -> int:
        """Record one failed grading; returns how many there were."""
        count, reasons = self._failures.pop(ident, (0, []))
        self._failures[ident] = (count + 1, (reasons + [reason])[-MAX_REASONS:])
        while len(self._failures) > self._max:
            self._failures.popitem(last=False)
        return count + 1

    def forget(self, ident: tuple[str, str]) -> None:
        self._failures.pop(ident, None)
