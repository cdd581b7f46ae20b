"""A per-model-version circuit breaker, local to each sidecar.

After ``threshold`` consecutive fallback-worthy failures of a version (not found, unavailable,
internal, deadline) its circuit opens: requests for it go straight to the default variant, with no
doomed call first and no retry-budget spend. After ``cool_down_s`` one request probes it
(half-open); success closes the circuit, failure re-opens it for twice as long (up to ``max_open_s``).
This is what stops a dead candidate within seconds, before any controller acts. Pure apart from
the injected clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _State:
    failures: int = 0
    open_until: float = 0.0
    open_for: float = 0.0
    probing: bool = False


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: int = 5,
        cool_down_s: float = 5.0,
        max_open_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._cool_down_s = cool_down_s
        self._max_open_s = max_open_s
        self._clock = clock
        self._states: dict[str, _State] = {}
        self.opened = 0  # times any circuit opened (for metrics and tests)

    def allow(self, key: str) -> bool:
        """May a request be sent to ``key`` now? At most one probe at a time while half-open."""
        state = self._states.get(key)
        if state is None or state.open_until == 0.0:
            return True
        if self._clock() < state.open_until or state.probing:
            return False
        state.probing = True
        return True

    def is_open(self, key: str) -> bool:
        state = self._states.get(key)
        return state is not None and state.open_until != 0.0

    def success(self, key: str) -> None:
        self._states.pop(key, None)

    def failure(self, key: str) -> None:
        state = self._states.setdefault(key, _State())
        state.failures += 1
        if state.probing:  # the probe failed: open again, for longer
            state.open_for = min(self._max_open_s, state.open_for * 2)
        elif state.failures >= self._threshold and state.open_until == 0.0:
            state.open_for = self._cool_down_s
            self.opened += 1
        else:
            return
        state.probing = False
        state.open_until = self._clock() + state.open_for
