"""A retry budget: fallbacks may add at most ``ratio`` extra calls per request (plus a small floor).

Without it a dead candidate doubles the load on the stable version exactly when it can least take
it. Tokens accrue ``ratio`` per request and ``min_per_s`` per second (so a quiet service can still
fall back), capped; each retry spends one. Pure apart from the injected clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RetryBudget:
    def __init__(
        self,
        *,
        ratio: float = 0.1,
        min_per_s: float = 10.0,
        cap: float = 100.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = ratio
        self._min_per_s = min_per_s
        self._cap = cap
        self._clock = clock
        self._tokens = min(cap, min_per_s)
        self._last = clock()
        self.denied = 0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._cap, self._tokens + (now - self._last) * self._min_per_s)
        self._last = now

    def record_request(self) -> None:
        self._tokens = min(self._cap, self._tokens + self._ratio)

    def try_spend(self) -> bool:
        self._refill()
        if self._tokens >= 1.0 - 1e-9:  # 10 x 0.1 must buy one retry despite rounding
            self._tokens -= 1.0
            return True
        self.denied += 1
        return False
