"""Per-variant sufficient statistics: what the SQL aggregation hands the statistics.

The unit is the user: events are aggregated per user first (``any``/``count``/``sum``/``mean`` as
the metric declares), then summed per variant into (n, sum, sum of squares) — the shape gbstats'
``SampleMeanStatistic`` and ``ProportionStatistic`` take — and, for ratio metrics, numerator and
denominator sums with their squares and cross product (gbstats' ``RatioStatistic``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class VariantStats:
    """n users, the sum of their per-user values, and the sum of the squares."""

    n: int
    sum: float
    sum_sq: float

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else 0.0


@dataclass(frozen=True, slots=True)
class RatioStats:
    """Per-user numerator x and denominator y: n, Σx, Σx², Σy, Σy², Σxy."""

    n: int
    num_sum: float
    num_sum_sq: float
    den_sum: float
    den_sum_sq: float
    num_den_sum: float

    @property
    def ratio(self) -> float:
        return self.num_sum / self.den_sum if self.den_sum else 0.0


Stats = VariantStats | RatioStats
_NONE: Mapping[str, Stats] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class MetricAggregates:
    """One metric of one experiment: per variant overall, per (segment attribute, value), and
    cumulatively as of the end of each UTC day (``by_day``, ISO date → per variant)."""

    experiment: str
    metric: str
    kind: str  # binary | continuous | ratio
    aggregation: str
    by_variant: Mapping[str, Stats]
    by_segment: Mapping[tuple[str, str], Mapping[str, Stats]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    by_day: Mapping[str, Mapping[str, Stats]] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class ExposureSummary:
    """Users per variant (first exposure), mixed users (exposed to several variants: excluded
    from every comparison unless asked), and new users per variant per UTC day."""

    experiment: str
    users: Mapping[str, int]
    mixed_users: int
    mixed_by_variants: Mapping[str, int]  # "control+candidate" → users
    new_by_day: Mapping[str, Mapping[str, int]]
    first_ms: int | None
    last_ms: int | None
