"""The flag's pre-registered ``experiment`` section, re-exported.

The model lives in :mod:`flags.experiment_plan` (a pydantic-only leaf) because a flag document
embeds it and ``flags`` must never import ``experiments``; everything here uses this name.
"""

from flags.experiment_plan import (
    ALLOWED_AGGREGATIONS,
    DEFAULT_AGGREGATION,
    NAME_PATTERN,
    Aggregation,
    Correction,
    Direction,
    ExperimentPlan,
    Guardrail,
    MetricName,
    MetricSpec,
    MetricType,
    Text,
    experiment_id,
    trackable_metrics,
)

__all__ = [
    "ALLOWED_AGGREGATIONS",
    "DEFAULT_AGGREGATION",
    "NAME_PATTERN",
    "Aggregation",
    "Correction",
    "Direction",
    "ExperimentPlan",
    "Guardrail",
    "MetricName",
    "MetricSpec",
    "MetricType",
    "Text",
    "experiment_id",
    "trackable_metrics",
]
