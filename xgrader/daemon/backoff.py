"""Exponential backoff with full jitter for idle or unreachable queues."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    low: float
    high: float
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def next_delay(self) -> float:
        """Full jitter (AWS style): uniform in [low, min(high, low * 2**n)]."""
        cap = min(self.high, self.low * (2 ** self._attempt))
        self._attempt = min(self._attempt + 1, 32)
        return self.rng.uniform(self.low, max(self.low, cap))

    def reset(self) -> None:
        self._attempt = 0
