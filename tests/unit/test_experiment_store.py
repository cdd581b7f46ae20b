"""The DuckDB store: idempotent ingestion and per-user aggregation, with exact numbers."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from experiments.events.model import Event, Exposure, Outcome
from experiments.plan import ExperimentPlan
from experiments.stats.summary import MeanStats as VariantStats
from experiments.stats.summary import RatioStats
from experiments.store import ExperimentStore

T = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY = 86_400_000
E = "digits"


def x(user: str, variant: str, at: int = T, tier: str | None = None) -> Exposure:
    version = "1" if variant == "control" else "2"
    return Exposure(E, "digits", user, variant, version, at, (("tier", tier),) if tier else ())


def o(event_id: str, user: str, metric: str, value: float, at: int = T + 1000) -> Outcome:
    return Outcome(event_id, E, "digits", user, metric, value, at)


PLAN = ExperimentPlan.model_validate(
    {
        "metrics": [
            {"name": "correct", "type": "binary"},
            {"name": "clicks", "type": "continuous"},  # sum
            {"name": "downloads", "type": "continuous"},
            {"name": "generations", "type": "continuous"},
            {
                "name": "dpg",
                "type": "ratio",
                "numerator": "downloads",
                "denominator": "generations",
            },
        ],
        "primary_metric": "correct",
        "segments": ["tier"],
    }
)


def with_aggregation(aggregation: str) -> ExperimentPlan:
    """The plan with `clicks` aggregated per user by ``aggregation``."""
    metrics = [m.model_dump() for m in PLAN.metrics]
    metrics[1]["aggregation"] = aggregation
    return ExperimentPlan.model_validate({**PLAN.model_dump(), "metrics": metrics})


BINARY, SUM, COUNT, MEAN, RATIO = (
    (PLAN, "correct"), (PLAN, "clicks"), (with_aggregation("count"), "clicks"),
    (with_aggregation("mean"), "clicks"), (PLAN, "dpg"),
)  # fmt: skip

EVENTS: list[Event] = [
    x("a", "control", tier="pro"),
    x("b", "control", tier="free"),
    x("c", "candidate", tier="pro"),
    x("d", "candidate", at=T + DAY),  # a day later, no tier
    o("1", "a", "correct", 1),
    o("2", "a", "correct", 0),
    o("3", "b", "correct", 0),
    o("4", "c", "correct", 1),
    o("5", "a", "clicks", 2),
    o("6", "a", "clicks", 3),
    o("7", "c", "clicks", 4),
    o("8", "d", "clicks", 1, at=T + DAY + 5),
    o("9", "a", "downloads", 1),
    o("10", "a", "generations", 4),
    o("11", "c", "downloads", 2),
    o("12", "c", "generations", 2),
    o("13", "d", "generations", 1, at=T + DAY + 5),
]


@pytest.fixture
def store() -> ExperimentStore:
    s = ExperimentStore()
    s.add(EVENTS)
    return s


def test_binary_count_sum_mean_and_ratio_per_variant(store: ExperimentStore) -> None:
    assert store.metric(E, *BINARY).by_variant == {
        "control": VariantStats(2, 1.0, 1.0),  # a: any(1, 0) = 1; b: 0
        "candidate": VariantStats(2, 1.0, 1.0),  # c: 1; d: no event = 0
    }
    assert store.metric(E, *SUM).by_variant == {
        "control": VariantStats(2, 5.0, 25.0),  # a: 5, b: 0
        "candidate": VariantStats(2, 5.0, 17.0),  # c: 4, d: 1
    }
    assert store.metric(E, *COUNT).by_variant == {
        "control": VariantStats(2, 2.0, 4.0),
        "candidate": VariantStats(2, 2.0, 2.0),
    }
    assert store.metric(E, *MEAN).by_variant == {  # users without an event are not counted
        "control": VariantStats(1, 2.5, 6.25),
        "candidate": VariantStats(2, 5.0, 17.0),
    }
    assert store.metric(E, *RATIO).by_variant == {
        # per user (downloads, generations): a (1, 4), b (0, 0); c (2, 2), d (0, 1)
        "control": RatioStats(2, 1.0, 1.0, 4.0, 16.0, 4.0),
        "candidate": RatioStats(2, 2.0, 4.0, 3.0, 5.0, 4.0),
    }


def test_ingesting_the_same_events_again_changes_nothing(store: ExperimentStore) -> None:
    before = {
        m[1] + str(i): store.metric(E, *m).by_variant for i, m in enumerate((BINARY, SUM, MEAN))
    }
    added = store.add(EVENTS)
    assert (added.exposures, added.outcomes) == (0, 0)
    assert store.table_counts() == {"exposures": 4, "outcomes": 13}
    after = {
        m[1] + str(i): store.metric(E, *m).by_variant for i, m in enumerate((BINARY, SUM, MEAN))
    }
    assert after == before


def test_duplicate_exposures_keep_the_earliest_sighting() -> None:
    store = ExperimentStore()
    # A restarted sidecar sees the user again later, with other attributes; same batch and not.
    store.add([x("a", "control", at=T + 50, tier="free"), x("a", "control", at=T, tier="pro")])
    store.add([x("a", "control", at=T + 99, tier="gold")])
    summary = store.exposure_summary(E)
    assert summary.users == {"control": 1}
    assert summary.first_ms == T
    seg = store.metric(E, *SUM, segments=["tier"]).by_segment
    assert list(seg) == [("tier", "pro")]


def test_outcomes_ingested_before_their_exposure_count() -> None:
    store = ExperimentStore()
    store.add([o("1", "a", "clicks", 3)])  # the outcome arrives first
    assert store.metric(E, *SUM).by_variant == {}
    store.add([x("a", "candidate")])
    assert store.metric(E, *SUM).by_variant == {"candidate": VariantStats(1, 3.0, 9.0)}


def test_outcomes_before_the_first_exposure_do_not_count_beyond_the_slack() -> None:
    store = ExperimentStore()
    store.add([x("a", "control", at=T), o("1", "a", "clicks", 1, at=T - 30_000),
               o("2", "a", "clicks", 10, at=T - 3_600_000)])  # fmt: skip
    assert store.metric(E, *SUM).by_variant["control"].sum == 1.0  # within 60 s: clock skew
    assert store.metric(E, *SUM, slack_ms=0).by_variant["control"].sum == 0.0


def test_mixed_users_are_reported_and_excluded_unless_asked(store: ExperimentStore) -> None:
    store.add([x("a", "candidate", at=T + 10)])  # a ramp moved `a` after their first exposure
    summary = store.exposure_summary(E)
    assert summary.users == {"control": 1, "candidate": 2}
    assert (summary.mixed_users, dict(summary.mixed_by_variants)) == (1, {"candidate+control": 1})
    assert store.metric(E, *SUM).by_variant["control"] == VariantStats(1, 0.0, 0.0)  # only b
    kept = store.metric(E, *SUM, include_mixed=True).by_variant
    assert kept["control"] == VariantStats(2, 5.0, 25.0)  # a counts for its first variant


def test_segments_and_days(store: ExperimentStore) -> None:
    aggregates = store.metric(E, *SUM, segments=["tier"], daily=True)
    assert aggregates.by_segment == {
        ("tier", "(missing)"): {"candidate": VariantStats(1, 1.0, 1.0)},
        ("tier", "free"): {"control": VariantStats(1, 0.0, 0.0)},
        ("tier", "pro"): {
            "candidate": VariantStats(1, 4.0, 16.0),
            "control": VariantStats(1, 5.0, 25.0),
        },
    }
    # Cumulative as of the end of each UTC day: d (exposed on day 2) appears on day 2 only.
    assert aggregates.by_day == {
        "2026-01-01": {"candidate": VariantStats(1, 4.0, 16.0), "control": VariantStats(2, 5.0, 25.0)},
        "2026-01-02": {"candidate": VariantStats(2, 5.0, 17.0), "control": VariantStats(2, 5.0, 25.0)},
    }  # fmt: skip
    assert store.exposure_summary(E).new_by_day == {
        "2026-01-01": {"candidate": 1, "control": 2},
        "2026-01-02": {"candidate": 1},
    }
    as_of = store.metric(E, *SUM, as_of_ms=T + DAY).by_variant
    assert as_of["candidate"] == VariantStats(1, 4.0, 16.0)


def test_an_unknown_experiment_is_empty(store: ExperimentStore) -> None:
    assert store.metric("other", *SUM).by_variant == {}
    summary = store.exposure_summary("other")
    assert (dict(summary.users), summary.mixed_users, summary.first_ms) == ({}, 0, None)


def test_parquet_export_holds_every_row(store: ExperimentStore, tmp_path: Path) -> None:
    written = store.export_parquet(tmp_path / "out")
    con = duckdb.connect()
    exposures = con.execute(
        f"SELECT user_id, variant FROM '{written['exposures']}' ORDER BY user_id"
    ).fetchall()
    assert exposures == [("a", "control"), ("b", "control"), ("c", "candidate"), ("d", "candidate")]
    count = con.execute(f"SELECT count(*), sum(value) FROM '{written['outcomes']}'").fetchone()
    assert count == (13, 22.0)


def test_the_store_persists_in_its_file(tmp_path: Path) -> None:
    path = tmp_path / "x.duckdb"
    with ExperimentStore(path) as s:
        s.add(EVENTS[:2])
    with ExperimentStore(path) as s:
        assert s.table_counts() == {"exposures": 2, "outcomes": 0}
        assert s.experiments() == [(E, "digits", 2)]
