"""From stored events to the report: ExperimentData read from DuckDB, judged by build_report."""

from __future__ import annotations

import random

from support_events import experiment_flag

from experiments.data import experiment_data, parse_split
from experiments.events.model import Event, Exposure, Outcome
from experiments.report import build_report
from experiments.stats.summary import MeanStats
from experiments.store import ExperimentStore
from flags.schema import parse_flag

T = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY = 86_400_000
SPEC = parse_flag(experiment_flag())


def events(users: int, seed: int = 7) -> list[Event]:
    """Two phases: 20 % candidate on day 1, 50 % from day 2; candidate answers better."""
    rng = random.Random(seed)
    out: list[Event] = []
    for i in range(users):
        day2 = i >= users // 2
        share = 50 if day2 else 20
        variant = "candidate" if rng.random() * 100 < share else "control"
        split = f"control={100 - share:g},candidate={share:g}"
        at = T + (DAY if day2 else 0) + i
        tier = "pro" if i % 2 else "free"
        out.append(Exposure("digits", "digits", f"u{i}", variant, "2" if variant == "candidate"
                            else "1", at, (("tier", tier),), split))  # fmt: skip
        p = 0.9 if variant == "candidate" else 0.7
        out.append(Outcome(f"c{i}", "digits", "digits", f"u{i}", "correct",
                           float(rng.random() < p), at + 10))  # fmt: skip
    return out


def test_stored_events_become_the_reports_data_and_a_verdict() -> None:
    store = ExperimentStore()
    store.add(events(4000))
    store.add([Exposure("digits", "digits", "u0", "candidate", "2", T + 5, (), "control=50,candidate=50"),
               Exposure("digits", "digits", "u1", "candidate", "2", T + 5, (), "control=50,candidate=50")])  # fmt: skip
    data = experiment_data(store, SPEC, now_ms=T + 8 * DAY)
    assert data.control == "control" and list(data.variants) == ["control", "candidate"]
    assert data.mixed_users == sum(1 for e in events(4000)[:4:2] if e.variant == "control")  # type: ignore[union-attr]
    assert sum(data.users.values()) == 4000 - data.mixed_users
    assert [p.label for p in data.phases] == ["control=80,candidate=20", "control=50,candidate=50"]
    assert sum(sum(p.observed.values()) for p in data.phases) == sum(data.users.values())
    correct = data.variants["candidate"]["correct"]
    assert isinstance(correct, MeanStats) and correct.n == data.users["candidate"]
    assert set(data.segments["tier"]) == {"free", "pro"}
    assert [d.day.isoformat() for d in data.daily] == ["2026-01-01", "2026-01-02"]
    assert data.daily[0].variants["control"]["correct"].n < data.variants["control"]["correct"].n
    assert round(data.days_run, 3) == 8.0
    dumped = build_report(SPEC.experiment, data).model_dump(mode="json")  # type: ignore[arg-type]
    assert dumped["users"] == dict(data.users)
    # Each phase is compared with its own split: a ramp is not a sample-ratio mismatch.
    assert [p["label"] for p in dumped["srm"]["phases"]] == [p.label for p in data.phases]
    assert dumped["srm"]["invalid"] is False
    assert dumped["decision"]["verdict"] == "ship"  # 0.9 vs 0.7 correct, 8 days, 4,000 users


def test_a_split_text_parses_back() -> None:
    assert parse_split("control=80,candidate=20") == {"control": 80.0, "candidate": 20.0}
    assert parse_split("") == {}
