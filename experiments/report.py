"""The report model: every number a terminal summary or an HTML page shows, as one JSON-able value.

``build_report(plan, data)`` is pure: per-variant sufficient statistics in (overall, per segment,
per day cumulative), a :class:`Report` out (``report.model_dump(mode="json")`` is the ``--json``
output). Renderers format; they compute nothing, so the terminal, the HTML page and the
rollout controller's gate always agree.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

from experiments.decision import Decision, Evidence, decide
from experiments.plan import ExperimentPlan, MetricSpec
from experiments.stats.corrections import LABELS, adjust
from experiments.stats.model import Comparison, Interval, StatsInputError
from experiments.stats.power import (
    absolute_delta,
    achieved_power,
    days_remaining,
    sample_size,
    sequential_sample_size,
)
from experiments.stats.proportion import two_proportions
from experiments.stats.ratio import ratio_test
from experiments.stats.sequential import sequential
from experiments.stats.srm import SrmPhase, SrmResult, sample_ratio_mismatch
from experiments.stats.summary import MeanStats, MetricStats, RatioStats
from experiments.stats.welch import welch

SCHEMA_VERSION = 1
VariantStats = Mapping[str, Mapping[str, MetricStats]]  # variant -> metric -> statistics


@dataclass(frozen=True)
class DailySlice:
    """Cumulative statistics up to the end of ``day`` (for the confidence sequence over time)."""

    day: dt.date
    variants: VariantStats


@dataclass(frozen=True)
class ExperimentData:
    """What the events side computes with SQL over per-user aggregates (mixed users excluded)."""

    control: str
    variants: VariantStats
    users: Mapping[str, int]
    phases: Sequence[SrmPhase]
    days_run: float
    mixed_users: int = 0
    segments: Mapping[str, Mapping[str, VariantStats]] = field(default_factory=dict)
    daily: Sequence[DailySlice] = ()
    as_of: dt.date | None = None


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MetricRow(_Value):
    metric: str
    type: str
    role: Literal["primary", "guardrail", "secondary"]
    treatment: str
    fixed: Comparison
    sequential: Comparison
    p_adjusted: float | None  # of the plan's inference, within its family
    correction: str


class SegmentRow(_Value):
    attribute: str
    value: str
    metric: str
    treatment: str
    comparison: Comparison  # the plan's inference
    p_adjusted: float | None
    correction: str


class TimelinePoint(_Value):
    day: dt.date
    treatment: str
    users_control: int
    users_treatment: int
    estimate: float | None
    fixed_ci: Interval
    sequential_ci: Interval
    relative: bool


class PowerProgress(_Value):
    metric: str
    baseline: float | None
    mde: float
    mde_relative: bool
    alpha: float
    power: float
    inference: str
    required_per_variant: int | None
    users_per_variant: dict[str, int]
    progress: float | None  # smallest variant / required
    power_now: float | None  # fixed-horizon power at today's smallest variant
    days_remaining: float | None
    note: str | None = None


class Report(_Value):
    schema_version: int
    plan: ExperimentPlan
    control: str
    users: dict[str, int]
    mixed_users: int
    days_run: float
    as_of: dt.date | None
    decision: Decision
    srm: SrmResult
    power: PowerProgress
    metrics: list[MetricRow]
    segments: list[SegmentRow]
    timeline: list[TimelinePoint]


def compare(
    spec: MetricSpec, control: MetricStats, treatment: MetricStats, alpha: float
) -> Comparison:
    """The fixed-horizon test the metric's type calls for."""
    if spec.type == "ratio":
        if not isinstance(control, RatioStats) or not isinstance(treatment, RatioStats):
            raise StatsInputError(f"metric {spec.name!r} is a ratio: it needs RatioStats")
        return ratio_test(control, treatment, alpha)
    if not isinstance(control, MeanStats) or not isinstance(treatment, MeanStats):
        raise StatsInputError(f"metric {spec.name!r} is {spec.type}: it needs MeanStats")
    if spec.type == "binary":
        return two_proportions(control, treatment, alpha)
    return welch(control, treatment, alpha)


def _chosen(plan: ExperimentPlan, fixed: Comparison) -> Comparison:
    return sequential(fixed, plan.sequential_tuning) if plan.sequential else fixed


def _role(plan: ExperimentPlan, name: str) -> Literal["primary", "guardrail", "secondary"]:
    if name == plan.primary_metric:
        return "primary"
    return "guardrail" if any(g.metric == name for g in plan.guardrails) else "secondary"


def _pairs(
    plan: ExperimentPlan, control: str, variants: VariantStats
) -> list[tuple[MetricSpec, str, Comparison]]:
    """(metric, treatment, fixed comparison) for every declared metric both sides have."""
    if control not in variants:
        raise StatsInputError(f"no statistics for the control variant {control!r}")
    rows = []
    for treatment in sorted(v for v in variants if v != control):
        for spec in plan.metrics:
            c, t = variants[control].get(spec.name), variants[treatment].get(spec.name)
            if c is not None and t is not None:
                rows.append((spec, treatment, compare(spec, c, t, plan.alpha)))
    return rows


def _metric_rows(plan: ExperimentPlan, data: ExperimentData) -> list[MetricRow]:
    pairs = [(s, t, f, _chosen(plan, f)) for s, t, f in _pairs(plan, data.control, data.variants)]
    # Two families: the primary metric across treatments, everything else together.
    adjusted: list[float | None] = [None] * len(pairs)
    labels = [""] * len(pairs)
    for is_primary in (True, False):
        idx = [i for i, p in enumerate(pairs) if (p[0].name == plan.primary_metric) == is_primary]
        method = plan.correction if len(idx) > 1 else "none"
        values = adjust([pairs[i][3].p_value for i in idx], method, plan.alpha)
        label = LABELS[method] + (f" over {len(idx)} tests" if method != "none" else "")
        for i, value in zip(idx, values, strict=True):
            adjusted[i], labels[i] = value, label
    return [
        MetricRow(
            metric=spec.name,
            type=spec.type,
            role=_role(plan, spec.name),
            treatment=treatment,
            fixed=fixed,
            sequential=sequential(fixed, plan.sequential_tuning),
            p_adjusted=adjusted[i],
            correction=labels[i],
        )
        for i, (spec, treatment, fixed, _) in enumerate(pairs)
    ]


def _segment_rows(plan: ExperimentPlan, data: ExperimentData) -> list[SegmentRow]:
    cells: list[tuple[str, str, MetricSpec, str, Comparison]] = []
    for attribute in sorted(data.segments):
        for value in sorted(data.segments[attribute]):
            variants = data.segments[attribute][value]
            if data.control not in variants:
                continue
            for spec, treatment, fixed in _pairs(plan, data.control, variants):
                cells.append((attribute, value, spec, treatment, _chosen(plan, fixed)))
    rows: list[SegmentRow] = []
    for spec in plan.metrics:  # one family per metric: all its segment cells
        family = [c for c in cells if c[2].name == spec.name]
        values = adjust([c[4].p_value for c in family], plan.correction, plan.alpha)
        label = LABELS[plan.correction] + f" over {len(family)} segment cells"
        rows += [
            SegmentRow(
                attribute=a,
                value=v,
                metric=s.name,
                treatment=t,
                comparison=c,
                p_adjusted=p,
                correction=label,
            )
            for (a, v, s, t, c), p in zip(family, values, strict=True)
        ]
    return rows


def _timeline(plan: ExperimentPlan, data: ExperimentData) -> list[TimelinePoint]:
    spec = plan.metric(plan.primary_metric)
    points = []
    for day in sorted(data.daily, key=lambda d: d.day):
        for metric, treatment, fixed in _pairs(plan, data.control, day.variants):
            if metric != spec:
                continue
            seq = sequential(fixed, plan.sequential_tuning)
            rel = plan.mde_relative and fixed.relative.estimate is not None
            points.append(
                TimelinePoint(
                    day=day.day,
                    treatment=treatment,
                    users_control=fixed.control.n,
                    users_treatment=fixed.treatment.n,
                    estimate=(fixed.relative if rel else fixed.absolute).estimate,
                    fixed_ci=(fixed.relative if rel else fixed.absolute).ci,
                    sequential_ci=(seq.relative if rel else seq.absolute).ci,
                    relative=rel,
                )
            )
    return points


def power_progress(plan: ExperimentPlan, data: ExperimentData) -> PowerProgress:
    """Users needed per variant for the plan's MDE and power, and how far along the test is."""
    spec = plan.metric(plan.primary_metric)
    base = data.variants.get(data.control, {}).get(spec.name)
    users = dict(data.users)
    smallest = min(users.values()) if users else 0
    inference = "confidence sequence" if plan.sequential else "fixed horizon"
    baseline = None if base is None else base.mean
    required: int | None = None
    now: float | None = None
    note: str | None = None
    try:
        if base is None or base.n < 2:
            raise StatsInputError("no baseline yet: the control has fewer than two users")
        binary = spec.type == "binary"
        per_user = base.variance_of_mean * base.n if isinstance(base, RatioStats) else base.variance
        variance = None if binary else per_user
        design = sequential_sample_size if plan.sequential else sample_size
        extra = {"tuning": plan.sequential_tuning} if plan.sequential else {}
        required = design(
            baseline=base.mean, mde=plan.mde, relative=plan.mde_relative, alpha=plan.alpha,
            power=plan.power, binary=binary, variance=variance, **extra,
        ).per_variant  # fmt: skip
        delta = absolute_delta(base.mean, plan.mde, plan.mde_relative)
        now = achieved_power(
            n_per_variant=smallest, baseline=base.mean, delta=delta, alpha=plan.alpha,
            binary=binary, variance=variance,
        )  # fmt: skip
    except StatsInputError as exc:
        note = str(exc)
    return PowerProgress(
        metric=spec.name, baseline=baseline, mde=plan.mde, mde_relative=plan.mde_relative,
        alpha=plan.alpha, power=plan.power, inference=inference,
        required_per_variant=required, users_per_variant=users,
        progress=None if required is None else smallest / required, power_now=now,
        days_remaining=None if required is None else days_remaining(
            required, list(users.values()), data.days_run
        ),
        note=note,
    )  # fmt: skip


def build_report(plan: ExperimentPlan, data: ExperimentData) -> Report:
    """Every number of the experiment's report, and the verdict judged against ``plan``."""
    metrics = _metric_rows(plan, data)
    srm = sample_ratio_mismatch(data.phases)
    power = power_progress(plan, data)
    results: dict[str, dict[str, Comparison]] = {}
    for row in metrics:
        results.setdefault(row.treatment, {})[row.metric] = (
            row.sequential if plan.sequential else row.fixed
        )
    evidence = Evidence(
        control=data.control, users=dict(data.users), results=results, srm=srm,
        mixed_users=data.mixed_users, days_run=data.days_run,
        required_per_variant=power.required_per_variant, as_of=data.as_of,
    )  # fmt: skip
    return Report(
        schema_version=SCHEMA_VERSION, plan=plan, control=data.control, users=dict(data.users),
        mixed_users=data.mixed_users, days_run=data.days_run, as_of=data.as_of,
        decision=decide(plan, evidence), srm=srm, power=power, metrics=metrics,
        segments=_segment_rows(plan, data), timeline=_timeline(plan, data),
    )  # fmt: skip
