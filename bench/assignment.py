"""Part 1, assignment cost: trafficsplit's ``evaluate`` vs the GrowthBook SDK vs a bare mmh3 hash.

The flag is the demo flag with a realistic allow-list (100 internal users), an attribute rule
(``tier == "enterprise" and tenure_days >= 30``) and an 80/20 split. GrowthBook runs the same three
rules as one feature, the way its docs tell a server app to use it: a new ``GrowthBook`` per request
(the parsed features are shared, as an app caching the payload would), then ``eval_feature``. The
``run(Experiment)`` row is GrowthBook's bare split for reference. Every loop is written out inline
so that no row pays for a wrapper call the others do not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import mmh3
from growthbook import Experiment, Feature, FeatureRule, GrowthBook

from bench.common import ROOT
from bench.report import Metric, PartReport
from flags.compiled import CompiledFlag
from flags.evaluation import Subject
from flags.schema import parse_flag
from flags.snapshot import Snapshot, evaluate

TS = "trafficsplit evaluate"
TS_PREBUILT = "  (same, Subject prebuilt)"
GB = "GrowthBook() + eval_feature"
GB_RUN = "GrowthBook() + run(Experiment)"
FLOOR = "mmh3.hash (floor)"
ALLOW_EVERY = 1000  # one user in a thousand is allow-listed: 100 of 100k

User = tuple[str, dict[str, Any]]


def make_users(count: int) -> list[User]:
    tiers = ("free", "pro", "enterprise", "free", "pro")
    return [
        (f"user-{i:07d}@example.com", {"tier": tiers[i % len(tiers)], "tenure_days": i % 97})
        for i in range(count)
    ]


def allow_list(users: Sequence[User]) -> list[str]:
    return [uid for i, (uid, _) in enumerate(users) if i % ALLOW_EVERY == 0][:100]


def trafficsplit_snapshot(allowed: list[str]) -> Snapshot:
    doc = json.loads((ROOT / "deploy" / "flags" / "digits.json").read_text())
    doc["rules"][0]["users"] = allowed
    return Snapshot({"digits": CompiledFlag(parse_flag(doc))})


def growthbook_features(allowed: list[str]) -> dict[str, Feature]:
    """The same flag as GrowthBook rules: force for the two rules, then an 80/20 experiment."""
    return {
        "digits": Feature(
            defaultValue="1",
            rules=[
                FeatureRule(condition={"id": {"$in": allowed}}, force="2"),
                FeatureRule(
                    condition={"tier": "enterprise", "tenure_days": {"$gte": 30}}, force="2"
                ),
                FeatureRule(
                    key="digits",
                    variations=["1", "2"],
                    weights=[0.8, 0.2],
                    coverage=1.0,
                    hashAttribute="id",
                ),
            ],
        )
    }


def run_trafficsplit(snapshot: Snapshot, users: Sequence[User]) -> tuple[float, float]:
    candidate = 0
    start = time.perf_counter()
    for uid, attrs in users:
        if evaluate(snapshot, "digits", Subject(uid, attrs)).variant == "candidate":
            candidate += 1
    elapsed = time.perf_counter() - start
    return elapsed, candidate / len(users)


def run_trafficsplit_prebuilt(
    snapshot: Snapshot, subjects: Sequence[Subject]
) -> tuple[float, float]:
    """Diagnostic: the evaluation alone, without building the request's Subject."""
    candidate = 0
    start = time.perf_counter()
    for subject in subjects:
        if evaluate(snapshot, "digits", subject).variant == "candidate":
            candidate += 1
    elapsed = time.perf_counter() - start
    return elapsed, candidate / len(subjects)


def run_growthbook(features: dict[str, Feature], users: Sequence[User]) -> tuple[float, float]:
    candidate = 0
    start = time.perf_counter()
    for uid, attrs in users:
        gb = GrowthBook(attributes={"id": uid, **attrs}, features=features)
        if gb.eval_feature("digits").value == "2":
            candidate += 1
    elapsed = time.perf_counter() - start
    return elapsed, candidate / len(users)


def run_growthbook_experiment(users: Sequence[User]) -> tuple[float, float]:
    experiment: Experiment[str] = Experiment(
        key="digits", variations=["1", "2"], weights=[0.8, 0.2]
    )
    candidate = 0
    start = time.perf_counter()
    for uid, attrs in users:
        gb = GrowthBook(attributes={"id": uid, **attrs})
        if gb.run(experiment).value == "2":
            candidate += 1
    elapsed = time.perf_counter() - start
    return elapsed, candidate / len(users)


def run_floor(users: Sequence[User]) -> tuple[float, float]:
    prefix = "digits"
    below = 0
    start = time.perf_counter()
    for uid, _ in users:
        if mmh3.hash(prefix + uid, 0, False) < 858993459:  # 20 % of 2**32
            below += 1
    elapsed = time.perf_counter() - start
    return elapsed, below / len(users)


def run(
    *, users: int = 100_000, rounds: int = 5, growthbook_users: int | None = None
) -> PartReport:
    """Alternate the four rows ``rounds`` times; GrowthBook may use a prefix of the users."""
    part = PartReport(
        name="assignment",
        title="Assignment cost per request (in-process, one thread)",
        metrics=[
            Metric("us_per_eval", "µs/eval", 3),
            Metric("x_faster_than_gb", "x faster than GB", 1),
            Metric("x_floor", "x floor", 1),
            Metric("candidate_share", "candidate %", 1),
        ],
    )
    population = make_users(users)
    gb_population = population[: growthbook_users or users]
    allowed = allow_list(population)
    snapshot = trafficsplit_snapshot(allowed)
    features = growthbook_features(allowed)
    subjects = [Subject(uid, attrs) for uid, attrs in population]
    part.params = {
        "users": len(population),
        "growthbook_users": len(gb_population),
        "rounds": rounds,
        "allow_list": len(allowed),
        "split": "control 80 / candidate 20",
    }
    # Warm-up: import-time caches, branch predictors, the allocator.
    run_trafficsplit(snapshot, population[:2000])
    run_growthbook(features, gb_population[:500])
    contenders: list[tuple[str, Callable[[], tuple[float, float]]]] = [
        (FLOOR, lambda: run_floor(population)),
        (TS, lambda: run_trafficsplit(snapshot, population)),
        (TS_PREBUILT, lambda: run_trafficsplit_prebuilt(snapshot, subjects)),
        (GB, lambda: run_growthbook(features, gb_population)),
        (GB_RUN, lambda: run_growthbook_experiment(gb_population)),
    ]
    for _ in range(rounds):
        per_eval: dict[str, float] = {}
        for row, fn in contenders:
            elapsed, share = fn()
            n = len(gb_population) if row in (GB, GB_RUN) else len(population)
            per_eval[row] = elapsed / n * 1e6
            part.add(row, "us_per_eval", per_eval[row])
            part.add(row, "candidate_share", share * 100)
        for row, us in per_eval.items():
            part.add(row, "x_faster_than_gb", per_eval[GB] / us)
            part.add(row, "x_floor", us / per_eval[FLOOR])
    part.target("trafficsplit µs/eval", part.median(TS, "us_per_eval"), "<=", 1.5, " µs")
    part.target("x faster than GrowthBook", part.median(TS, "x_faster_than_gb"), ">=", 8.0, "x")
    part.notes.append(
        "trafficsplit evaluate builds the request's Subject in the loop, as a server does; "
        "the indented row is the evaluation alone"
    )
    part.notes.append(
        "candidate share: allow-list + enterprise rule + 20 % split (the two SDKs hash differently, "
        "so the share agrees, not the users); the mmh3 row's share is its 20 % threshold"
    )
    return part
