"""A per-model-version circuit breaker, local to each sidecar.

After ``threshold`` consecutive fallback-worthy failures of a version (not found, unavailable,
internal, deadline, queue full) its circuit opens: requests for it go straight to the default
variant, with no doomed call first and no retry-budget spend. After ``cool_down_s`` one request
probes it (half-open); success closes the circuit, failure re-opens it for twice as long (up to
``max_open_s``). This is what stops a dead candidate within seconds, before any controller acts.

Calls go through a :class:`Permit`, and leaving the permit always settles the breaker: a probe
that ends in a client error, a cancellation or anything else that says nothing about the
version's health releases the half-open slot, so the next request probes again. A circuit can
therefore never stay open because its probe never reported back. Pure apart from the clock.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"  # cool-down over: the next request (or the one in flight) probes


@dataclass
class _State:
    failures: int = 0
    open_until: float = 0.0
    open_for: float = 0.0
    probing: bool = False


class Permit:
    """Leave to call one model version. Settle it with :meth:`succeeded` or :meth:`failed`;
    leaving the ``with`` block unsettled counts as neither (the call told nothing)."""

    __slots__ = ("_breaker", "_key", "_probe", "_settled")

    def __init__(self, breaker: CircuitBreaker, key: str, *, probe: bool) -> None:
        self._breaker = breaker
        self._key = key
        self._probe = probe
        self._settled = False

    @property
    def probe(self) -> bool:
        return self._probe

    def succeeded(self) -> None:
        self._settled = True
        self._breaker._succeeded(self._key, self._probe)

    def failed(self) -> None:
        self._settled = True
        self._breaker._failed(self._key, self._probe)

    def __enter__(self) -> Permit:
        self._settled = False
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._settled and self._probe:
            self._breaker._released(self._key)


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
        self._closed_permits: dict[str, Permit] = {}  # stateless when closed: one per key
        self.opened = 0  # times any circuit opened
        self.probes: dict[str, int] = {"succeeded": 0, "failed": 0, "released": 0}

    def permit(self, key: str) -> Permit | None:
        """Leave to call ``key`` now, or None while its circuit is open (one probe at a time)."""
        state = self._states.get(key)
        if state is None or state.open_until == 0.0:
            permit = self._closed_permits.get(key)
            if permit is None:
                if len(self._closed_permits) > 4096:
                    self._closed_permits.clear()
                permit = self._closed_permits[key] = Permit(self, key, probe=False)
            return permit
        if state.probing or self._clock() < state.open_until:
            return None
        state.probing = True
        return Permit(self, key, probe=True)

    def state(self, key: str) -> CircuitState:
        state = self._states.get(key)
        if state is None or state.open_until == 0.0:
            return CircuitState.CLOSED
        if state.probing or self._clock() >= state.open_until:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    def is_open(self, key: str) -> bool:
        return self.state(key) is not CircuitState.CLOSED

    def states(self) -> dict[str, CircuitState]:
        """Every version the breaker has seen fail, with its state (for metrics)."""
        return {key: self.state(key) for key in list(self._states)}

    def reset(self, key: str) -> None:
        """Close ``key``'s circuit now (its version just became ready again)."""
        self._states.pop(key, None)

    def _succeeded(self, key: str, probe: bool) -> None:
        if probe:
            self.probes["succeeded"] += 1
        self._states.pop(key, None)

    def _released(self, key: str) -> None:
        state = self._states.get(key)
        if state is not None:
            state.probing = False
        self.probes["released"] += 1

    def _failed(self, key: str, probe: bool) -> None:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _State()
        state.failures += 1
        if probe:  # the probe failed: open again, for longer
            self.probes["failed"] += 1
            state.open_for = min(self._max_open_s, state.open_for * 2)
        elif state.failures >= self._threshold and state.open_until == 0.0:
            state.open_for = self._cool_down_s
            self.opened += 1
        else:
            return
        state.probing = False
        state.open_until = self._clock() + state.open_for
