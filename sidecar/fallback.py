"""The fallback policy: how long a cohort's version may take, and which failures fall back.

A non-default version gets a per-attempt budget, a share of the caller's remaining deadline
(``attempt_share``, 0.5 by default), so that when it is slow or hangs the default variant still
has the rest of the deadline to answer: a slow candidate costs its users latency, never an error.
Unavailable, not found, internal, deadline and queue-full (RESOURCE_EXHAUSTED) failures fall
back; INVALID_ARGUMENT is the caller's and never does. Pure apart from the injected numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.backends.base import BackendError, ErrorKind
from sidecar.outcome import FallbackCause

_FALLBACK_KINDS = {
    ErrorKind.NOT_FOUND: FallbackCause.ERROR,
    ErrorKind.UNAVAILABLE: FallbackCause.ERROR,
    ErrorKind.INTERNAL: FallbackCause.ERROR,
    ErrorKind.RESOURCE_EXHAUSTED: FallbackCause.ERROR,
    ErrorKind.DEADLINE_EXCEEDED: FallbackCause.TIMEOUT,
}


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    attempt_share: float = 0.5  # of the remaining deadline, for a version that can fall back
    min_fallback_s: float = 0.005  # never start a fallback with less deadline than this left

    def attempt_timeout(self, remaining_s: float) -> float:
        return remaining_s * self.attempt_share

    @staticmethod
    def cause_for(error: BackendError) -> FallbackCause | None:
        """Why this failure falls back, or None when it must go back to the caller."""
        return _FALLBACK_KINDS.get(error.kind)


class MedianTracker:
    """A running estimate of each version's median latency, in O(1) per sample and no
    allocation: the estimate moves a few percent towards each sample (a multiplicative
    "frugal" median), so it follows a version that gets slower within ~50 requests."""

    __slots__ = ("_medians", "_step")

    def __init__(self, step: float = 0.05) -> None:
        self._medians: dict[str, float] = {}
        self._step = step

    def observe(self, key: str, seconds: float) -> None:
        median = self._medians.get(key)
        if median is None:
            self._medians[key] = seconds
        elif seconds > median:
            self._medians[key] = median * (1 + self._step)
        elif seconds < median:
            self._medians[key] = median * (1 - self._step)

    def median(self, key: str) -> float | None:
        return self._medians.get(key)
