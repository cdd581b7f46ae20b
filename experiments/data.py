"""From the store to the statistics: the :class:`~experiments.report.ExperimentData` that
``build_report(plan, data)`` takes, read from DuckDB for one flag's experiment.

Each user counts in the variant of their first exposure; mixed users are excluded (and counted)
unless asked. Sample-ratio phases are the splits recorded with the exposures (each exposure
carries the split that chose it), so a ramp from 5 % to 50 % is two phases, each compared with
its own expected shares.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from experiments.aggregates import MetricAggregates
from experiments.plan import experiment_id
from experiments.report import DailySlice, ExperimentData, VariantStats
from experiments.stats.srm import SrmPhase
from experiments.stats.summary import MeanStats, MetricStats, RatioStats
from experiments.store import DAY_MS, ExperimentStore
from flags.schema import FlagSpec

UNRECORDED = ""  # exposures written before splits were recorded: no phase for them


def parse_split(text: str) -> dict[str, float]:
    """``control=80,candidate=20`` → shares (the format sidecar.exposures records)."""
    shares: dict[str, float] = {}
    for part in text.split(","):
        name, _, share = part.partition("=")
        if name and share:
            shares[name] = float(share)
    return shares


def _empty(kind: str) -> MetricStats:
    return RatioStats(0, 0.0, 0.0, 0.0, 0.0, 0.0) if kind == "ratio" else MeanStats(0, 0.0, 0.0)


def _by_variant(
    variants: list[str], aggregates: Mapping[str, MetricAggregates], per: str, key: object = None
) -> dict[str, dict[str, MetricStats]]:
    """variant → metric → statistics, from each metric's aggregates (``per``: overall, a
    segment ``key`` or a day ``key``); a variant without data gets zero statistics."""
    out: dict[str, dict[str, MetricStats]] = {}
    for variant in variants:
        row: dict[str, MetricStats] = {}
        for name, agg in aggregates.items():
            source: Mapping[str, MetricStats] = agg.by_variant
            if per == "segment":
                source = agg.by_segment.get(key, {})  # type: ignore[call-overload]
            elif per == "day":
                source = agg.by_day.get(key, {})  # type: ignore[call-overload]
            row[name] = source.get(variant) or _empty(agg.kind)
        out[variant] = row
    return out


def experiment_data(
    store: ExperimentStore,
    spec: FlagSpec,
    *,
    now_ms: int,
    as_of_ms: int | None = None,
    include_mixed: bool = False,
) -> ExperimentData:
    """Everything the report needs about ``spec``'s experiment, as of ``as_of_ms`` (default now)."""
    plan = spec.experiment
    if plan is None:
        raise ValueError(f"flag {spec.key!r} has no `experiment` section")
    experiment = experiment_id(spec.key, spec.salt, plan)
    control = plan.control or spec.default_variant
    summary = store.exposure_summary(experiment)
    aggregates = {
        m.name: store.metric(
            experiment, plan, m.name, daily=True, include_mixed=include_mixed, as_of_ms=as_of_ms
        )
        for m in plan.metrics
    }
    variants = sorted({control, *summary.users}, key=lambda v: (v != control, v))
    segments: dict[str, dict[str, VariantStats]] = {}
    first = aggregates[plan.metrics[0].name]  # every metric has the same users, so segments
    for attribute, value in first.by_segment:
        segments.setdefault(attribute, {})[value] = _by_variant(
            variants, aggregates, "segment", (attribute, value)
        )
    days = sorted({day for agg in aggregates.values() for day in agg.by_day})
    daily = [
        DailySlice(
            day=dt.date.fromisoformat(day), variants=_by_variant(variants, aggregates, "day", day)
        )
        for day in days
    ]
    phases = [
        SrmPhase(label=split, expected=parse_split(split), observed=dict(observed))
        for split, observed in summary.by_split.items()
        if split != UNRECORDED
    ]
    end = as_of_ms if as_of_ms is not None else now_ms
    days_run = 0.0 if summary.first_ms is None else max(0.0, (end - summary.first_ms) / DAY_MS)
    return ExperimentData(
        control=control,
        variants=_by_variant(variants, aggregates, "all"),
        users={v: summary.users.get(v, 0) for v in variants},
        phases=phases,
        days_run=days_run,
        mixed_users=summary.mixed_users,
        segments=segments,
        daily=daily,
        as_of=dt.datetime.fromtimestamp(end / 1000, dt.UTC).date(),
    )
