"""Guardrail verdicts over in-memory windows, with exact numbers (pure: no Redis, no clock)."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from scipy.stats import hypergeom

from flags.schema import Guardrails, Target
from rollout.guardrails import Baseline, Rule, Status, judge, relative_error_p_value
from signals.latency import BOUNDARY_COUNT, bucket_index
from signals.model import Group, TargetKey, VersionStats, Window

CONTROL = Target(model="digits", version="1")
CANDIDATE = Target(model="digits", version="2")
ONLY_RELATIVE = Guardrails(
    max_error_rate=None, short_max_error_rate=None, max_p99_latency_ratio=None, min_requests=30
)


def stats(attempts: int, failures: int = 0, latency_s: float | None = None) -> VersionStats:
    histogram: tuple[int, ...] = ()
    if latency_s is not None:
        counts = [0] * (BOUNDARY_COUNT + 1)
        counts[bucket_index(latency_s)] = attempts
        histogram = tuple(counts)
    errors = MappingProxyType({"UNAVAILABLE": failures} if failures else {})
    return VersionStats(attempts, errors, histogram)


def window(
    candidate: VersionStats | None = None,
    control: VersionStats | None = None,
    *,
    group: Group = Group.EXPOSED,
) -> Window:
    entries = {}
    if candidate is not None:
        entries[TargetKey("digits", group, "triton", "digits", "2")] = candidate
    if control is not None:
        entries[TargetKey("digits", Group.EXPOSED, "triton", "digits", "1")] = control
    return Window(0, 10, entries)


def verdict(g: Guardrails, long: Window, short: Window | None = None, **kw: object):  # type: ignore[no-untyped-def]
    return judge(
        g,
        flag="digits",
        candidate=CANDIDATE,
        control=CONTROL,
        long=long,
        short=short if short is not None else window(),
        **kw,  # type: ignore[arg-type]
    )


def test_one_error_in_30_requests_does_not_trip_the_relative_rule() -> None:
    # Fisher exact: P(all of 1 failure among 600 lands in the candidate's 30) = 30/600 = 0.05.
    assert relative_error_p_value(1, 30, 0, 570) == pytest.approx(0.05, abs=1e-12)
    v = verdict(ONLY_RELATIVE, window(stats(30, 1), stats(570, 0)))
    assert v.status is Status.HOLDING
    assert v.fired == ()


def test_a_clearly_worse_candidate_trips_the_relative_rule_with_its_evidence() -> None:
    # 10/200 vs 10/4000: one-sided hypergeometric tail P(X >= 10), X ~ H(4200, 20, 200).
    expected = float(hypergeom.sf(9, 4200, 20, 200))
    assert relative_error_p_value(10, 200, 10, 4000) == pytest.approx(expected, rel=1e-9)
    assert expected < 0.01
    v = verdict(ONLY_RELATIVE, window(stats(200, 10), stats(4000, 10)))
    assert v.status is Status.BREACHED
    (fired,) = v.fired
    assert fired.rule is Rule.RELATIVE_ERROR
    assert fired.observed == pytest.approx(expected, rel=1e-9)
    assert (v.candidate_long.attempts, v.candidate_long.failures) == (200, 10)
    assert (v.control_long.attempts, v.control_long.failures) == (4000, 10)
    assert v.candidate_long.error_rate == 0.05
    assert v.control_long.error_rate == 0.0025


def test_equal_error_rates_do_not_trip_the_relative_rule() -> None:
    v = verdict(ONLY_RELATIVE, window(stats(1000, 5), stats(19000, 95)))
    assert v.status is Status.HOLDING


def test_absolute_error_rate_over_the_long_window() -> None:
    g = Guardrails(max_error_rate=0.01, relative_error_alpha=None, max_p99_latency_ratio=None)
    ok = verdict(g, window(stats(100, 1), stats(1900)))
    assert ok.status is Status.HOLDING  # 1 % is not above 1 %
    bad = verdict(g, window(stats(100, 2), stats(1900)))
    assert bad.status is Status.BREACHED
    assert [(f.rule, f.window, f.observed, f.threshold) for f in bad.fired] == [
        (Rule.ERROR_RATE, "long", 0.02, 0.01)
    ]


def test_below_min_requests_is_not_judged_on_the_long_window() -> None:
    g = Guardrails(min_requests=100, short_max_error_rate=None)
    v = verdict(g, window(stats(99, 50, 0.5), stats(2000, 0, 0.01)))
    assert v.status is Status.NOT_ENOUGH_DATA
    assert v.fired == ()


def test_the_short_window_catches_a_hard_failure_before_the_long_window_has_data() -> None:
    g = Guardrails(min_requests=500)  # defaults: short window 0.2 over >= 20 requests
    # 2 s of total failure at 10 req/s after 8 healthy seconds: 20/100 = 0.2, not above.
    assert verdict(g, window(stats(100, 20)), window(stats(100, 20))).status is (
        Status.NOT_ENOUGH_DATA
    )
    v = verdict(g, window(stats(100, 21)), window(stats(100, 21)))
    assert v.status is Status.BREACHED
    assert [(f.rule, f.window, f.observed) for f in v.fired] == [
        (Rule.SHORT_ERROR_RATE, "short", 0.21)
    ]
    # below the short window's floor a streak of failures is not judged yet
    quiet = verdict(g, window(stats(19, 19)), window(stats(19, 19)))
    assert quiet.status is Status.NOT_ENOUGH_DATA


def test_p99_ratio_against_the_control_over_the_same_window() -> None:
    g = Guardrails(max_error_rate=None, relative_error_alpha=None, max_p99_latency_ratio=1.5)
    # All samples in one bucket each: the ratio of p99s is exactly 2^(bucket distance / 8).
    slow, base = bucket_index(0.030), bucket_index(0.010)
    v = verdict(g, window(stats(200, 0, 0.030), stats(3800, 0, 0.010)))
    assert v.status is Status.BREACHED
    (fired,) = v.fired
    assert fired.rule is Rule.P99_RATIO
    assert fired.observed == pytest.approx(2 ** ((slow - base) / 8), rel=1e-12)
    assert 2.8 < fired.observed < 3.2
    near = verdict(g, window(stats(200, 0, 0.012), stats(3800, 0, 0.010)))
    assert near.status is Status.HOLDING
    # 3x, but 1.5 ms vs 0.5 ms: under the 2 ms floor, noise rather than a regression.
    tiny = verdict(g, window(stats(200, 0, 0.0015), stats(3800, 0, 0.0005)))
    assert tiny.status is Status.HOLDING and tiny.fired == ()
    floorless = Guardrails(max_error_rate=None, relative_error_alpha=None,
                           max_p99_latency_ratio=1.5, p99_min_increase_ms=0)  # fmt: skip
    assert verdict(floorless, window(stats(200, 0, 0.0015), stats(3800, 0, 0.0005))).fired
    # 99 samples: the p99 would be the slowest one; not judged yet (the rest still is)
    g50 = Guardrails(max_error_rate=None, max_p99_latency_ratio=1.5, min_requests=50)
    few = verdict(g50, window(stats(99, 0, 0.030), stats(3800, 0, 0.010)))
    assert few.status is Status.HOLDING and few.fired == ()


def test_at_the_full_step_the_recorded_baseline_stands_in_for_the_control() -> None:
    g = Guardrails(max_error_rate=None, relative_error_alpha=None, max_p99_latency_ratio=1.5)
    control_p99 = stats(100, 0, 0.010).latency_quantile(0.99)
    baseline = Baseline(attempts=5000, failures=0, p99_s=control_p99)
    v = verdict(g, window(stats(300, 0, 0.030)), baseline=baseline)  # no control traffic at all
    assert v.control_is_baseline
    assert v.control_long.attempts == 5000
    assert [f.rule for f in v.fired] == [Rule.P99_RATIO]
    without = verdict(g, window(stats(300, 0, 0.030)))
    assert without.status is Status.HOLDING  # nothing to compare with: not judged by ratio


@pytest.mark.parametrize(
    "group", [Group.PINNED, Group.SHADOW, Group.TARGETED, Group.NOT_IN_EXPERIMENT]
)
def test_only_exposed_traffic_is_judged(group: Group) -> None:
    g = Guardrails(min_requests=10)
    v = verdict(
        g, window(stats(500, 500), stats(1000), group=group), window(stats(500, 500), group=group)
    )
    assert v.status is Status.NOT_ENOUGH_DATA
    assert v.candidate_long.attempts == 0


def test_verdict_json_holds_both_versions_numbers() -> None:
    v = verdict(ONLY_RELATIVE, window(stats(200, 10), stats(4000, 10)))
    data = v.to_json()
    assert data["status"] == "breached"
    assert data["fired"][0]["rule"] == "relative_error_alpha"
    assert data["candidate_long"]["failures"] == 10
    assert data["control_long"]["attempts"] == 4000
