"""The values a window of fleet-wide measurements is made of (pure: no I/O, no clock).

Every sidecar adds, per second, for each flag and each *attempted* target (backend, model,
version) and each traffic group, the number of attempts, failures by class and a latency
histogram over :data:`signals.latency.BOUNDARIES`. Counts from many sidecars and many seconds
add up exactly, so a controller merges them and reads fleet error rates and p50/p95/p99 per
version. Groups keep experiment traffic apart from pinned, out-of-coverage and shadow traffic:
shadow errors never roll back a served version.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from signals.latency import BOUNDARY_COUNT, quantile

HISTOGRAM_SIZE = BOUNDARY_COUNT + 1  # the last bucket is +Inf


class Group(enum.StrEnum):
    """Which traffic a measurement comes from (the sidecar's membership, plus shadow)."""

    EXPOSED = "exposed"
    TARGETED = "targeted"
    NOT_IN_EXPERIMENT = "not_in_experiment"
    PINNED = "pinned"
    UNFLAGGED = "unflagged"
    SHADOW = "shadow"  # mirrored calls whose answers nobody was served


# Attempt results that are not the version's failure: the caller's bad input, the caller
# leaving. Everything else that is not "OK" is (a fallback or an open circuit counts against the
# version that was attempted, even though the user was served).
# Shadow calls record how their answer compared (AGREE / DISAGREE): answered, so not failures.
NOT_A_FAILURE = frozenset({"OK", "INVALID_ARGUMENT", "CANCELLED", "AGREE", "DISAGREE"})


@dataclass(frozen=True, slots=True)
class TargetKey:
    flag: str
    group: Group
    backend: str
    model: str
    version: str


_NO_ERRORS: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class VersionStats:
    """Attempts on one target in one group over some seconds (sufficient statistics)."""

    attempts: int = 0
    errors: Mapping[str, int] = field(default_factory=lambda: _NO_ERRORS)  # result → count
    histogram: tuple[int, ...] = ()  # HISTOGRAM_SIZE counts of attempt durations, or () if none

    @property
    def failures(self) -> int:
        return sum(n for result, n in self.errors.items() if result not in NOT_A_FAILURE)

    @property
    def error_rate(self) -> float | None:
        return self.failures / self.attempts if self.attempts else None

    def latency_quantile(self, q: float) -> float | None:
        """The ``q`` quantile of attempt durations in seconds (None without samples)."""
        return quantile(self.histogram, q) if self.histogram else None

    def merged(self, other: VersionStats) -> VersionStats:
        errors = dict(self.errors)
        for result, n in other.errors.items():
            errors[result] = errors.get(result, 0) + n
        if not self.histogram:
            histogram = other.histogram
        elif not other.histogram:
            histogram = self.histogram
        else:
            histogram = tuple(a + b for a, b in zip(self.histogram, other.histogram, strict=True))
        return VersionStats(self.attempts + other.attempts, MappingProxyType(errors), histogram)


def merge_all(stats: Iterable[VersionStats]) -> VersionStats:
    total = VersionStats()
    for item in stats:
        total = total.merged(item)
    return total


@dataclass(frozen=True, slots=True)
class Window:
    """Merged measurements of the whole fleet for ``[start_s, end_s)`` (unix seconds)."""

    start_s: int
    end_s: int
    stats: Mapping[TargetKey, VersionStats]

    def version(
        self, flag: str, model: str, version: str, groups: Iterable[Group] = (Group.EXPOSED,)
    ) -> VersionStats:
        """One version's measurements in ``groups``, summed over backends."""
        wanted = frozenset(groups)
        return merge_all(
            s
            for k, s in self.stats.items()
            if k.flag == flag and k.model == model and k.version == version and k.group in wanted
        )
