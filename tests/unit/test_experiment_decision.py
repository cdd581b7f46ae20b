"""The decision engine and the report model on fixed sufficient statistics: each verdict, and why."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from typing import Any

import pytest

from experiments.plan import ExperimentPlan
from experiments.report import DailySlice, ExperimentData, build_report
from experiments.stats import MeanStats, RatioStats, StatsInputError
from experiments.stats.srm import SrmPhase

TODAY = dt.date(2025, 3, 10)


def make_plan(**overrides: Any) -> ExperimentPlan:
    doc: dict[str, Any] = {
        "metrics": [
            {"name": "correct", "type": "binary"},
            {"name": "latency_ms", "type": "continuous", "aggregation": "mean"},
            {"name": "dl_per_gen", "type": "ratio", "numerator": "dl", "denominator": "gen"},
            {"name": "dl", "type": "continuous", "aggregation": "count"},
            {"name": "gen", "type": "continuous", "aggregation": "count"},
        ],
        "primary_metric": "correct",
        "guardrails": [{"metric": "latency_ms", "worst_change": 0.05}],
        "mde": 0.05,
        "sequential_tuning": 20000,
        "segments": ["tier"],
    }
    doc.update(overrides)
    return ExperimentPlan.model_validate(doc)


def arm(n: int, correct: float, latency: float = 50.0, latency_sd: float = 10.0) -> dict[str, Any]:
    if n == 0:
        return {"correct": MeanStats(0, 0, 0), "latency_ms": MeanStats(0, 0, 0)}
    hits = round(n * correct)
    lat_sum = n * latency
    return {
        "correct": MeanStats(n, hits, hits),
        "latency_ms": MeanStats(n, lat_sum, (n - 1) * latency_sd**2 + lat_sum**2 / n),
        "dl_per_gen": RatioStats(n, 0.3 * 3 * n, 1.5 * n, 3 * n, 12 * n, 4.0 * n),
    }


def data(
    control: dict[str, Any], treatments: dict[str, dict[str, Any]], *, days: float = 14,
    observed: dict[str, int] | None = None, mixed: int = 0, **extra: Any,
) -> ExperimentData:  # fmt: skip
    variants = {"v1": control, **treatments}
    users = {name: stats["correct"].n for name, stats in variants.items()}
    phase = SrmPhase(
        label="50/50", expected={name: 1.0 for name in variants}, observed=observed or users
    )
    return ExperimentData(
        control="v1", variants=variants, users=users, phases=[phase], days_run=days,
        mixed_users=mixed, as_of=TODAY, **extra,
    )  # fmt: skip


def test_a_clear_win_with_safe_guardrails_ships() -> None:
    report = build_report(make_plan(), data(arm(20000, 0.80), {"v2": arm(20000, 0.84)}))
    decision = report.decision
    assert decision.verdict == "ship" and decision.variant == "v2"
    assert any("v2 vs v1 on correct: +5.00%" in r for r in decision.reasons)
    assert decision.treatments[0].guardrails[0].status == "safe"
    primary = next(r for r in report.metrics if r.role == "primary")
    assert primary.sequential.p_value is not None and primary.sequential.p_value < 0.05
    assert primary.fixed.absolute.estimate == pytest.approx(0.04)


def test_a_significant_loss_stops_even_before_the_minimum_duration() -> None:
    report = build_report(make_plan(), data(arm(20000, 0.84), {"v2": arm(20000, 0.80)}, days=2))
    assert report.decision.verdict == "do_not_ship"
    assert any("significantly worse" in r for r in report.decision.reasons)


def test_a_breached_guardrail_blocks_a_winner() -> None:
    report = build_report(
        make_plan(), data(arm(20000, 0.80), {"v2": arm(20000, 0.84, latency=60.0)})
    )
    assert report.decision.verdict == "do_not_ship"
    assert any("Guardrail latency_ms breached" in r for r in report.decision.reasons)


def test_a_winner_keeps_running_until_the_minimum_duration() -> None:
    report = build_report(make_plan(), data(arm(20000, 0.80), {"v2": arm(20000, 0.84)}, days=3))
    decision = report.decision
    assert decision.verdict == "keep_running"
    assert decision.days_remaining == pytest.approx(4.0)
    assert decision.until == TODAY + dt.timedelta(days=4)
    assert any("Ran 3 of the planned minimum 7 days" in r for r in decision.reasons)


def test_no_difference_keeps_running_then_stops_at_the_planned_size() -> None:
    plan = make_plan()
    early = build_report(plan, data(arm(2000, 0.80), {"v2": arm(2000, 0.80)}, days=7))
    assert early.decision.verdict == "keep_running"
    required = early.power.required_per_variant
    assert required is not None and required > 2000
    # At 2000 users a week, the rest of the planned size takes (required - 2000) / (2000 / 7) days.
    assert early.decision.days_remaining == pytest.approx((required - 2000) / (2000 / 7))
    done = build_report(plan, data(arm(required, 0.80), {"v2": arm(required, 0.80)}, days=30))
    assert done.decision.verdict == "do_not_ship"
    assert any(
        "No significant change at the planned sample size" in r for r in done.decision.reasons
    )


def test_a_fixed_horizon_plan_waits_for_its_sample_size() -> None:
    plan = make_plan(sequential=False)
    report = build_report(plan, data(arm(1000, 0.80), {"v2": arm(1000, 0.86)}))
    assert report.metrics[0].fixed.significant
    assert report.power.required_per_variant is not None
    assert report.power.required_per_variant > 1000
    assert report.decision.verdict == "keep_running"
    assert any("Fixed-horizon test" in r for r in report.decision.reasons)


def test_sample_ratio_mismatch_is_invalid_whatever_the_effect() -> None:
    skewed = {"v1": 20000, "v2": 21000}
    report = build_report(
        make_plan(), data(arm(20000, 0.80), {"v2": arm(21000, 0.84)}, observed=skewed)
    )
    assert report.decision.verdict == "invalid" and report.srm.invalid
    assert "Sample ratio mismatch in phase '50/50'" in report.decision.reasons[0]


def test_too_many_mixed_exposures_is_invalid() -> None:
    report = build_report(make_plan(), data(arm(20000, 0.8), {"v2": arm(20000, 0.84)}, mixed=900))
    assert report.decision.verdict == "invalid"
    assert "900 users (2.2%) saw more than one variant" in report.decision.reasons[0]


def test_several_treatments_correct_the_primary_and_ship_the_best() -> None:
    report = build_report(
        make_plan(),
        data(arm(20000, 0.80), {"v2": arm(20000, 0.83), "v3": arm(20000, 0.845)}),
    )
    assert report.decision.verdict == "ship" and report.decision.variant == "v3"
    primaries = [r for r in report.metrics if r.role == "primary"]
    assert {r.correction for r in primaries} == {
        "Holm-Bonferroni (family-wise error rate) over 2 tests"
    }
    assert all(r.p_adjusted is not None and r.sequential.p_value is not None for r in primaries)
    assert all(r.p_adjusted >= r.sequential.p_value for r in primaries)  # type: ignore[operator]


def test_report_has_segments_timeline_power_and_dumps_to_json() -> None:
    segments = {"tier": {"free": {"v1": arm(9000, 0.79), "v2": arm(9000, 0.83)},
                         "pro": {"v1": arm(11000, 0.81), "v2": arm(11000, 0.85)}}}  # fmt: skip
    daily = [
        DailySlice(day=TODAY - dt.timedelta(days=13 - d), variants={
            "v1": arm(1500 * (d + 1), 0.80), "v2": arm(1500 * (d + 1), 0.84)})
        for d in range(14)
    ]  # fmt: skip
    report = build_report(
        make_plan(),
        data(arm(20000, 0.80), {"v2": arm(20000, 0.84)}, segments=segments, daily=daily),
    )
    assert len(report.timeline) == 14
    widths = [p.sequential_ci.high - p.sequential_ci.low for p in report.timeline]  # type: ignore[operator]
    assert all(b < a for a, b in itertools.pairwise(widths))  # the sequence narrows
    assert all(p.fixed_ci.low > p.sequential_ci.low for p in report.timeline)  # type: ignore[operator]
    assert {(s.attribute, s.value, s.metric) for s in report.segments} >= {
        ("tier", "free", "correct")
    }
    assert all("over 2 segment cells" in s.correction for s in report.segments)
    assert report.power.progress is not None and report.power.power_now is not None
    dumped = json.loads(json.dumps(report.model_dump(mode="json"), allow_nan=False))
    assert dumped["decision"]["verdict"] == "ship"
    assert dumped["metrics"][0]["fixed"]["statistic"] is not None


def test_wrong_statistics_for_a_metric_type_say_so() -> None:
    bad = arm(100, 0.5)
    bad["dl_per_gen"] = MeanStats(100, 10, 10)
    with pytest.raises(StatsInputError, match="'dl_per_gen' is a ratio: it needs RatioStats"):
        build_report(make_plan(), data(arm(100, 0.5), {"v2": bad}))
    with pytest.raises(StatsInputError, match="control variant 'v0'"):
        build_report(
            make_plan(), ExperimentData(control="v0", variants={}, users={}, phases=[], days_run=1)
        )


def test_no_data_yet_keeps_running_without_a_date() -> None:
    report = build_report(make_plan(), data(arm(0, 0.0), {"v2": arm(0, 0.0)}, days=0))
    assert report.decision.verdict == "keep_running"
    assert report.power.required_per_variant is None and report.power.note
    assert any("not estimable yet" in r for r in report.decision.reasons)
