"""Assignment: pinned vectors, every rule operator, and the reasons returned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import mmh3
import pytest
from support import ROOT, digits_flag

from flags import CompiledFlag, ErrorCode, Reason, Snapshot, Subject, evaluate, parse_flag
from flags.hashing import bucket, coverage_hash, split_hash

VECTORS = json.loads(
    (Path(__file__).parent.parent / "fixtures" / "assignment_vectors.json").read_text()
)


def compiled(doc: dict[str, Any]) -> CompiledFlag:
    return CompiledFlag(parse_flag(doc))


def snapshot_of(*docs: dict[str, Any]) -> Snapshot:
    return Snapshot({d["key"]: compiled(d) for d in docs})


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: f"{c['flag']}:{c['user']}")
def test_published_vectors(case: dict[str, Any]) -> None:
    flags = {f["key"]: compiled(f) for f in VECTORS["flags"]}
    assert split_hash(case["salt"], case["flag"], case["user"]) == case["split_hash"]
    assert bucket(case["split_hash"]) == case["split_bucket_ppm"]
    assert (
        bucket(coverage_hash(case["salt"], case["flag"], case["user"]))
        == case["coverage_bucket_ppm"]
    )
    resolution = evaluate(flags, case["flag"], Subject(case["user"], case["attributes"]))
    assert (resolution.variant, str(resolution.reason)) == (case["variant"], case["reason"])


def test_at_least_twenty_vectors_cover_every_outcome() -> None:
    cases = VECTORS["cases"]
    assert len(cases) >= 20
    outcomes = {(c["flag"], c["variant"], c["reason"]) for c in cases}
    assert ("digits", "candidate", "SPLIT") in outcomes
    assert ("digits", "control", "DEFAULT") in outcomes
    assert ("digits", "candidate", "TARGETING_MATCH") in outcomes
    assert {v for f, v, _ in outcomes if f == "ranker"} == {"a", "b", "c"}


def test_hash_is_flagd_compatible_with_an_empty_salt() -> None:
    # flagd hashes flagKey + targetingKey with unsigned murmur3 (seed 0): (h * total) >> 32.
    h = mmh3.hash("digits" + "user-1", 0, False)
    assert split_hash("", "digits", "user-1") == h
    assert bucket(h, 100) == (h * 100) >> 32


def test_assignment_is_identical_in_another_process() -> None:
    users = [f"u{i}" for i in range(200)]
    here = [evaluate(snapshot_of(digits_flag()), "digits", Subject(u)).variant for u in users]
    code = (
        "import json,sys; sys.path.insert(0, 'tests');"
        "from support import digits_flag; from flags import *;"
        "s = Snapshot({'digits': CompiledFlag(parse_flag(digits_flag()))});"
        f"print(json.dumps([evaluate(s, 'digits', Subject(u)).variant for u in {users!r}]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # str hashing differs; ours must not
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert json.loads(out) == here


def test_disabled_flag_serves_default_and_exposes_nobody() -> None:
    r = evaluate(snapshot_of(digits_flag(enabled=False)), "digits", Subject("alice@example.com"))
    assert (r.variant, r.reason, r.exposed) == ("control", Reason.DISABLED, False)


def test_allow_list_wins_over_split() -> None:
    r = evaluate(snapshot_of(digits_flag()), "digits", Subject("alice@example.com"))
    assert (r.variant, r.reason, r.rule, r.exposed) == (
        "candidate",
        Reason.TARGETING_MATCH,
        "dogfood",
        False,  # allow-listed users are targeted, not exposed: no split chose their variant
    )


def test_rules_are_tried_in_order_first_match_wins() -> None:
    doc = digits_flag(
        rules=[
            {
                "name": "first",
                "when": {"attribute": "tier", "op": "eq", "value": "pro"},
                "serve": "control",
            },
            {
                "name": "second",
                "when": {"attribute": "tier", "op": "eq", "value": "pro"},
                "serve": "candidate",
            },
        ]
    )
    r = evaluate(snapshot_of(doc), "digits", Subject("x", {"tier": "pro"}))
    assert (r.variant, r.rule) == ("control", "first")


def test_rule_with_its_own_split_divides_matching_users() -> None:
    doc = digits_flag(
        rules=[
            {
                "name": "pro",
                "when": {"attribute": "tier", "op": "eq", "value": "pro"},
                "split": {"control": 50, "candidate": 50},
            }
        ],
        allocation=None,
    )
    snap = snapshot_of(doc)
    got = [evaluate(snap, "digits", Subject(f"p{i}", {"tier": "pro"})) for i in range(4000)]
    share = sum(r.variant == "candidate" for r in got) / len(got)
    assert 0.46 < share < 0.54
    assert all(r.reason == Reason.TARGETING_MATCH and r.rule == "pro" for r in got)
    r = evaluate(snap, "digits", Subject("p1", {"tier": "free"}))
    assert (r.variant, r.reason, r.exposed) == ("control", Reason.DEFAULT, False)


CONDITIONS = [
    # (condition, attributes, expected match)
    ({"attribute": "tier", "op": "eq", "value": "pro"}, {"tier": "pro"}, True),
    ({"attribute": "tier", "op": "eq", "value": "pro"}, {"tier": "free"}, False),
    ({"attribute": "tier", "op": "ne", "value": "pro"}, {"tier": "free"}, True),
    ({"attribute": "tier", "op": "ne", "value": "pro"}, {}, False),  # missing never matches
    ({"attribute": "tier", "op": "in", "value": ["pro", "team"]}, {"tier": "team"}, True),
    ({"attribute": "tier", "op": "in", "value": ["pro", "team"]}, {"tier": "free"}, False),
    ({"attribute": "tier", "op": "not_in", "value": ["pro"]}, {"tier": "free"}, True),
    ({"attribute": "tier", "op": "not_in", "value": ["pro"]}, {}, False),
    ({"attribute": "tenure_days", "op": "lt", "value": 3}, {"tenure_days": "2"}, True),
    ({"attribute": "tenure_days", "op": "lt", "value": 3}, {"tenure_days": "3"}, False),
    ({"attribute": "tenure_days", "op": "lte", "value": 3}, {"tenure_days": 3}, True),
    (
        {"attribute": "tenure_days", "op": "gt", "value": 3},
        {"tenure_days": "10"},
        True,
    ),  # 10 > 3 numerically
    ({"attribute": "tenure_days", "op": "gte", "value": 3.5}, {"tenure_days": "3.4"}, False),
    ({"attribute": "tenure_days", "op": "gt", "value": 3}, {"tenure_days": "lots"}, False),
    ({"attribute": "country", "op": "in", "value": [1, 2]}, {"country": "2"}, True),
    ({"attribute": "beta", "op": "eq", "value": True}, {"beta": "true"}, True),
    ({"attribute": "version", "op": "gte", "value": "2026-01"}, {"version": "2026-03"}, True),
    (
        {
            "all": [
                {"attribute": "a", "op": "eq", "value": "1"},
                {"attribute": "b", "op": "eq", "value": "2"},
            ]
        },
        {"a": "1", "b": "2"},
        True,
    ),
    (
        {
            "all": [
                {"attribute": "a", "op": "eq", "value": "1"},
                {"attribute": "b", "op": "eq", "value": "2"},
            ]
        },
        {"a": "1", "b": "3"},
        False,
    ),
    (
        {
            "any": [
                {"attribute": "a", "op": "eq", "value": "1"},
                {"attribute": "b", "op": "eq", "value": "2"},
            ]
        },
        {"b": "2"},
        True,
    ),
    ({"not": {"attribute": "a", "op": "eq", "value": "1"}}, {"a": "2"}, True),
]


@pytest.mark.parametrize(("condition", "attributes", "matches"), CONDITIONS)
def test_condition_operators(
    condition: dict[str, Any], attributes: dict[str, Any], matches: bool
) -> None:
    doc = digits_flag(
        rules=[{"name": "r", "when": condition, "serve": "candidate"}], allocation=None
    )
    r = evaluate(snapshot_of(doc), "digits", Subject("someone", attributes))
    assert (r.rule == "r") is matches


def test_coverage_zero_keeps_everyone_out_of_the_experiment() -> None:
    doc = digits_flag(
        rules=[], allocation={"coverage": 0, "split": {"control": 50, "candidate": 50}}
    )
    snap = snapshot_of(doc)
    got = [evaluate(snap, "digits", Subject(f"u{i}")) for i in range(500)]
    assert {(r.variant, r.reason, r.exposed) for r in got} == {("control", Reason.DEFAULT, False)}


def test_unknown_flag_is_an_error_without_a_variant() -> None:
    r = evaluate(snapshot_of(digits_flag()), "nope", Subject("u"))
    assert (r.variant, r.reason, r.error_code) == (None, Reason.ERROR, ErrorCode.FLAG_NOT_FOUND)
    assert r.cohort == "none"


def test_missing_user_id_serves_default_with_an_error_code() -> None:
    r = evaluate(snapshot_of(digits_flag()), "digits", Subject(""))
    assert (r.variant, r.reason, r.error_code) == (
        "control",
        Reason.ERROR,
        ErrorCode.TARGETING_KEY_MISSING,
    )


def test_evaluation_never_raises_on_unorderable_attributes() -> None:
    doc = digits_flag(
        rules=[{"when": {"attribute": "v", "op": "gt", "value": "a"}, "serve": "candidate"}]
    )
    r = evaluate(snapshot_of(doc), "digits", Subject("u", {"v": object()}))  # type: ignore[dict-item]
    assert r.variant in {"control", "candidate"}


def test_resolution_carries_target_and_revision() -> None:
    r = evaluate(snapshot_of(digits_flag(revision=7)), "digits", Subject("alice@example.com"))
    assert r.target is not None and (r.target.model, r.target.version) == ("digits", "2")
    assert r.target.parameters == {"note": "mlp"}
    assert r.revision == 7
