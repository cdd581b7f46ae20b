"""What the SQL aggregation hands the statistics: per-variant sufficient statistics of one metric
(overall, per segment value, per day) and the exposure counts.

The unit is the user: events are aggregated per user first (``any``/``count``/``sum``/``mean`` as
the metric declares), then summed per variant into the statistics' own values
(:class:`~experiments.stats.summary.MeanStats`: n, sum, sum of squares, the shape gbstats'
``SampleMeanStatistic`` takes; :class:`~experiments.stats.summary.RatioStats`: numerator and
denominator sums, their squares and the cross product, gbstats' ``RatioStatistic``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from experiments.stats.summary import MetricStats

Stats = MetricStats  # MeanStats | RatioStats (experiments.stats.summary)


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
    by_split: Mapping[str, Mapping[str, int]]  # split in force at first exposure → users
    first_ms: int | None
    last_ms: int | None
