"""Pure statistics over per-variant sufficient statistics (n, sum, sum of squares; cross sums).

One small module per test; every function takes immutable values and returns immutable values
(pydantic models, so a report can dump them to JSON). No I/O, no clock, no global state.
"""

from experiments.stats.model import Comparison, Effect, Interval, StatsInputError
from experiments.stats.summary import MeanStats, MetricStats, RatioStats

__all__ = [
    "Comparison",
    "Effect",
    "Interval",
    "MeanStats",
    "MetricStats",
    "RatioStats",
    "StatsInputError",
]
