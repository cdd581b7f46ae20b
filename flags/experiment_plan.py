"""A flag's optional ``experiment`` section: the pre-registered plan an experiment is judged by.

Pure schema (pydantic), validated with the rest of the flag by :func:`flags.schema.parse_flag`.
It lives under ``flags`` because a flag document embeds it and ``flags`` imports nothing that
builds on it; ``experiments.plan`` re-exports it for the recording and analysing side.

The plan declares the metrics apps may ``Track`` (an outcome for an undeclared metric is
refused), how each is aggregated per user, the segment attributes recorded with each exposure,
and the pre-registration the decision engine reads (primary metric and direction, guardrails,
minimum detectable effect, alpha, power, minimum duration).

Example::

    "experiment": {
      "hypothesis": "v2 answers more digits correctly",
      "metrics": [
        {"name": "correct", "type": "binary"},
        {"name": "latency_ms", "type": "continuous", "aggregation": "mean"},
        {"name": "downloads_per_generation", "type": "ratio",
         "numerator": "downloads", "denominator": "generations"}
      ],
      "primary_metric": "correct",
      "segments": ["tier", "country"]
    }
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

METRIC_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
MetricName = Annotated[str, StringConstraints(pattern=METRIC_PATTERN)]
Probability = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]

MetricType = Literal["binary", "continuous", "ratio"]
Aggregation = Literal["any", "count", "sum", "mean"]
# A binary metric is "did the user do it at all"; the others default to the per-user total.
DEFAULT_AGGREGATION: dict[str, Aggregation] = {
    "binary": "any",
    "continuous": "sum",
    "ratio": "sum",
}
MAX_SEGMENTS = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class MetricSpec(_Strict):
    """One metric: its outcome events are aggregated per user, then compared per variant.

    ``ratio`` metrics divide two event streams summed per user (``numerator`` / ``denominator``,
    e.g. downloads per generation); those two names are what apps ``Track``.
    """

    name: MetricName
    type: MetricType
    aggregation: Aggregation | None = None  # None: DEFAULT_AGGREGATION[type]
    numerator: MetricName | None = None
    denominator: MetricName | None = None
    description: str = ""

    @model_validator(mode="after")
    def _ratio_parts(self) -> MetricSpec:
        parts = (self.numerator, self.denominator)
        if self.type == "ratio" and None in parts:
            raise ValueError(
                f"metric {self.name!r}: a ratio metric needs `numerator` and `denominator` "
                "(the metric names apps track, e.g. downloads / generations)"
            )
        if self.type != "ratio" and parts != (None, None):
            raise ValueError(
                f"metric {self.name!r}: `numerator`/`denominator` are for ratio metrics only"
            )
        if self.type == "binary" and self.aggregation not in (None, "any"):
            raise ValueError(
                f"metric {self.name!r}: a binary metric is aggregated with `any` (did the user "
                "do it at all); use type `continuous` for counts and sums"
            )
        return self

    @property
    def per_user(self) -> Aggregation:
        """How this metric's events are combined per user."""
        return self.aggregation or DEFAULT_AGGREGATION[self.type]

    @property
    def tracked_names(self) -> tuple[str, ...]:
        """The metric names an outcome event may carry for this metric."""
        if self.numerator is not None and self.denominator is not None:
            return (self.numerator, self.denominator)
        return (self.name,)


class GuardrailSpec(_Strict):
    """A metric that must not get worse than ``worst_change`` (relative, e.g. -0.02 = -2 %)."""

    metric: MetricName
    worst_change: Annotated[float, Field(allow_inf_nan=False)]


class ExperimentPlan(_Strict):
    """The experiment a flag runs: what is measured, and what was decided up front."""

    id: MetricName | None = None  # default: the flag key plus its salt (see experiment_id)
    hypothesis: str = ""
    metrics: list[MetricSpec] = Field(min_length=1)
    primary_metric: MetricName | None = None  # default: the first metric
    direction: Literal["increase", "decrease"] = "increase"
    guardrails: list[GuardrailSpec] = Field(default_factory=list)
    segments: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=MAX_SEGMENTS
    )
    control: MetricName | None = None  # default: the flag's default variant
    mde: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.05
    alpha: Probability = 0.05
    power: Probability = 0.8
    min_duration_days: Annotated[float, Field(ge=0, le=365)] = 7.0

    @model_validator(mode="after")
    def _names_resolve(self) -> ExperimentPlan:
        issues: list[str] = []
        names = [m.name for m in self.metrics]
        known = set(names)
        if len(known) != len(names):
            issues.append("metrics: each metric name must appear once")
        if self.primary_metric is not None and self.primary_metric not in known:
            issues.append(f"primary_metric: {self.primary_metric!r} is not a declared metric")
        issues += [
            f"guardrails: {g.metric!r} is not a declared metric"
            for g in self.guardrails
            if g.metric not in known
        ]
        if len(set(self.segments)) != len(self.segments):
            issues.append("segments: each attribute must appear once")
        if issues:
            raise ValueError("; ".join(issues))
        return self

    @property
    def primary(self) -> MetricSpec:
        name = self.primary_metric or self.metrics[0].name
        return next(m for m in self.metrics if m.name == name)

    def metric(self, name: str) -> MetricSpec | None:
        return next((m for m in self.metrics if m.name == name), None)

    def trackable(self) -> frozenset[str]:
        """Every metric name an outcome event may carry."""
        return frozenset(n for m in self.metrics for n in m.tracked_names)


def experiment_id(flag_key: str, salt: str, plan: ExperimentPlan | None) -> str:
    """The experiment a flag's exposures belong to: ``plan.id`` if set, else ``key`` or
    ``key@salt``. Changing the salt reshuffles users, so it starts a new experiment."""
    if plan is not None and plan.id:
        return plan.id
    return f"{flag_key}@{salt}" if salt else flag_key
