"""The pre-registered experiment plan: the flag's optional ``experiment`` section.

Written before the experiment starts (hypothesis, metrics, primary metric and its direction,
guardrails, MDE, alpha, power, minimum duration) and validated like the rest of the flag, so the
verdict is judged against what was promised rather than what looks good afterwards.

This module imports nothing from the project (pydantic only). It lives under ``flags`` because a
flag document embeds it (``flags.schema``) and ``flags`` never imports the packages that build on
it; ``experiments.plan`` re-exports it for the statistics, the report and the event path. Field
names are part of the flag's JSON format (``docs/experiments.md``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
MetricName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=4096)]

MetricType = Literal["binary", "continuous", "ratio"]
Aggregation = Literal["any", "count", "sum", "mean"]
Direction = Literal["increase", "decrease"]
Correction = Literal["holm", "fdr_bh", "none"]

# The per-user aggregation each type allows (binary: did the user have the event at all).
ALLOWED_AGGREGATIONS: dict[str, tuple[str, ...]] = {
    "binary": ("any",),
    "continuous": ("count", "sum", "mean"),
}
DEFAULT_AGGREGATION = {"binary": "any", "continuous": "sum"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class MetricSpec(_Strict):
    """A declared metric. ``Track`` outcomes name it; the per-user aggregate is what is tested.

    ``binary``: 1 if the user had any event with a non-zero value, else 0 (aggregation ``any``).
    ``continuous``: the ``count``, ``sum`` or ``mean`` of the user's event values.
    ``ratio``: per-user ``numerator`` over per-user ``denominator``, two other declared
    (non-ratio) metrics, e.g. downloads per generation; analysed with the delta method.
    """

    name: MetricName
    type: MetricType
    aggregation: Aggregation | None = None
    numerator: MetricName | None = None
    denominator: MetricName | None = None
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _default_aggregation(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("aggregation") is None:
            default = DEFAULT_AGGREGATION.get(str(data.get("type")))
            if default is not None:
                data = {**data, "aggregation": default}
        return data

    @model_validator(mode="after")
    def _fits_type(self) -> MetricSpec:
        if self.type == "ratio":
            if self.numerator is None or self.denominator is None:
                raise ValueError(
                    f"metric {self.name!r}: a ratio needs numerator and denominator "
                    "(names of two declared metrics)"
                )
            if self.aggregation is not None:
                raise ValueError(
                    f"metric {self.name!r}: a ratio takes no aggregation "
                    "(its numerator and denominator metrics have theirs)"
                )
            if self.name in (self.numerator, self.denominator):
                raise ValueError(f"metric {self.name!r}: a ratio cannot refer to itself")
            return self
        if self.numerator is not None or self.denominator is not None:
            raise ValueError(
                f"metric {self.name!r}: numerator/denominator are for type 'ratio' only"
            )
        allowed = ALLOWED_AGGREGATIONS[self.type]
        if self.aggregation not in allowed:
            raise ValueError(
                f"metric {self.name!r}: a {self.type} metric aggregates per user with "
                f"{' or '.join(allowed)}, not {self.aggregation!r}"
            )
        return self


class Guardrail(_Strict):
    """A metric that must not get worse than ``worst_change`` (signed; relative by default).

    ``worst_change: -0.02`` on accuracy: a drop of up to 2 % is tolerated, more is harm.
    ``worst_change: 0.05`` on latency: a rise of up to 5 % is tolerated.
    """

    metric: MetricName
    worst_change: Annotated[float, Field(allow_inf_nan=False)]
    relative: bool = True

    @model_validator(mode="after")
    def _non_zero(self) -> Guardrail:
        if self.worst_change == 0:
            raise ValueError(
                f"guardrail {self.metric!r}: worst_change must be non-zero; its sign says which "
                "direction is harm (e.g. -0.02 for 'at most 2 % lower')"
            )
        return self


class ExperimentPlan(_Strict):
    """The experiment section of a flag: what is measured and how the verdict is reached."""

    id: MetricName | None = None  # explicit experiment id; default: flag key + salt
    hypothesis: Text | None = None
    control: MetricName | None = None  # default: the flag's default variant
    metrics: list[MetricSpec] = Field(min_length=1)
    primary_metric: MetricName
    direction: Direction = "increase"
    guardrails: list[Guardrail] = Field(default_factory=list)
    segments: list[MetricName] = Field(default_factory=list, max_length=16)
    mde: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.05
    mde_relative: bool = True
    alpha: Annotated[float, Field(gt=0, le=0.2)] = 0.05
    power: Annotated[float, Field(ge=0.5, lt=1)] = 0.8
    min_duration_days: Annotated[float, Field(ge=0, le=365)] = 7
    sequential: bool = True  # always-valid intervals, safe to look every day
    sequential_tuning: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 5000.0
    correction: Correction = "holm"
    max_mixed_share: Annotated[float, Field(ge=0, le=1)] = 0.01

    @model_validator(mode="after")
    def _references_exist(self) -> ExperimentPlan:
        issues: list[str] = []
        names = [m.name for m in self.metrics]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            issues.append(f"metrics: duplicate names {', '.join(duplicates)}")
        by_name = {m.name: m for m in self.metrics}
        hint = f"(declared: {', '.join(names)})"
        if self.primary_metric not in by_name:
            issues.append(f"primary_metric: {self.primary_metric!r} is not declared {hint}")
        for i, guard in enumerate(self.guardrails):
            if guard.metric not in by_name:
                issues.append(f"guardrails.{i}.metric: {guard.metric!r} is not declared {hint}")
        for metric in self.metrics:
            for part in (metric.numerator, metric.denominator):
                if part is None:
                    continue
                target = by_name.get(part)
                if target is None:
                    issues.append(f"metric {metric.name!r}: {part!r} is not declared {hint}")
                elif target.type == "ratio":
                    issues.append(f"metric {metric.name!r}: {part!r} is a ratio itself")
        if len(set(self.segments)) != len(self.segments):
            issues.append("segments: duplicate attribute names")
        if issues:
            raise ValueError("; ".join(issues))
        return self

    def metric(self, name: str) -> MetricSpec:
        """The declared metric ``name`` (KeyError if undeclared)."""
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)


def trackable_metrics(plan: ExperimentPlan) -> frozenset[str]:
    """The metric names an outcome (``Track``) may carry: every declared non-ratio metric (a
    ratio's numerator and denominator are declared metrics themselves)."""
    return frozenset(m.name for m in plan.metrics if m.type != "ratio")


def experiment_id(flag_key: str, salt: str, plan: ExperimentPlan | None) -> str:
    """The experiment a flag's exposures belong to: ``plan.id`` if set, else ``key`` or
    ``key@salt``. Changing the salt reshuffles users, so it starts a new experiment."""
    if plan is not None and plan.id:
        return plan.id
    return f"{flag_key}@{salt}" if salt else flag_key
