"""The gates before the first step, pure: when a stored golden result may be reused, when the
shadow gate applies, and what the checks together make the controller do (exact strings)."""

from __future__ import annotations

import json
from typing import Any

from support import digits_flag

from flags.schema import FlagSpec, parse_flag
from rollout.decide import Kind
from rollout.gates import (
    Gate,
    GateCheck,
    GateVerdict,
    fingerprint,
    gate_action,
    golden_check,
    golden_staleness,
    shadow_gate_applies,
)


def spec(**overrides: Any) -> FlagSpec:
    return parse_flag(digits_flag(**overrides))


def stored(spec_: FlagSpec, **changes: Any) -> dict[str, Any]:
    """A result document as ``<prefix>golden:<flag>`` holds it (JSON round trip included)."""
    doc = {"verdict": "pass", "timestamp": 1000.0, "fingerprint": fingerprint(spec_, "candidate")}
    return json.loads(json.dumps(doc | changes))  # type: ignore[no-any-return]


def test_a_stored_result_is_fresh_only_for_the_same_versions_and_golden_spec() -> None:
    base = spec(golden={"max_accuracy_drop": 0.01})
    doc = stored(base)
    expected = fingerprint(base, "candidate")
    assert golden_staleness(doc, expected, now=5000.0, max_age_s=None) is None
    other = "the stored golden result is for other versions or another golden spec"
    moved = digits_flag(golden={"max_accuracy_drop": 0.01})
    moved["variants"]["candidate"]["version"] = "3"
    for changed in (
        spec(golden={"max_accuracy_drop": 0.02}),
        spec(golden={"max_accuracy_drop": 0.01, "file": "digits/other.npz"}),
        parse_flag(moved),
    ):
        assert golden_staleness(doc, fingerprint(changed, "candidate"), now=5000.0,
                                max_age_s=None) == other  # fmt: skip
    # the parameters bound to a version are part of what was tested
    params = digits_flag(golden={"max_accuracy_drop": 0.01})
    params["variants"]["candidate"]["parameters"] = {"note": "other prompt"}
    assert golden_staleness(doc, fingerprint(parse_flag(params), "candidate"), now=5000.0,
                            max_age_s=None) == other  # fmt: skip


def test_staleness_by_age_and_by_what_is_missing() -> None:
    base = spec(golden={})
    expected = fingerprint(base, "candidate")
    doc = stored(base)
    assert golden_staleness(doc, expected, now=1060.0, max_age_s=60) is None
    assert (
        golden_staleness(doc, expected, now=1060.5, max_age_s=60)
        == "the stored golden result is older than 60 s"
    )
    assert golden_staleness(None, expected, now=0, max_age_s=None) == "no stored golden result"
    assert (
        golden_staleness(stored(base, verdict=None), expected, now=0, max_age_s=None)
        == "the stored golden result has no verdict"
    )
    # a result written before fingerprints existed is not trusted
    legacy = {"verdict": "pass", "timestamp": 1000.0}
    assert golden_staleness(legacy, expected, now=0, max_age_s=None) is not None
    # a timestamp that is not a number is as good as none
    assert golden_staleness(stored(base, timestamp="x"), expected, now=0, max_age_s=1) is not None


def test_the_shadow_gate_applies_only_to_a_mirrored_candidate_with_requirements() -> None:
    mirrored = {"variant": "candidate", "percent": 10}
    assert shadow_gate_applies(spec(shadow=mirrored), "candidate")  # default min_compared 100
    assert not shadow_gate_applies(spec(shadow=mirrored | {"percent": 0}), "candidate")
    assert not shadow_gate_applies(spec(shadow=None), "candidate")
    off = mirrored | {"min_compared": 0, "min_agreement": 0}
    assert not shadow_gate_applies(spec(shadow=off), "candidate")
    assert shadow_gate_applies(spec(shadow=off | {"min_agreement": 0.9}), "candidate")
    assert not shadow_gate_applies(spec(shadow=mirrored), "control")  # another variant ramps


GOLDEN_PASS = {
    "verdict": "pass",
    "reasons": [],
    "agreement": 0.9711,
    "control": {"version": "1", "accuracy": 0.9644},
    "candidate": {"version": "2", "accuracy": 0.9667},
}


def test_gate_action_blocks_on_any_failure_waits_on_anything_undecided() -> None:
    golden = golden_check(GOLDEN_PASS)
    assert golden == GateCheck(Gate.GOLDEN, GateVerdict.PASS, (), GOLDEN_PASS)
    shadow_wait = GateCheck(Gate.SHADOW, GateVerdict.WAIT, ("50 answers compared, 100 needed",))
    shadow_fail = GateCheck(Gate.SHADOW, GateVerdict.FAIL, ("agreement 0.8 below 0.9",))
    golden_fail = golden_check(GOLDEN_PASS | {"verdict": "fail", "reasons": ["worse"]})
    waiting = gate_action([golden, shadow_wait], 1.0)
    assert (waiting.kind, waiting.reason) == (
        Kind.WAIT,
        "waiting for the shadow gate: 50 answers compared, 100 needed",
    )
    blocked = gate_action([golden_fail, shadow_wait], 1.0)
    assert (blocked.kind, blocked.reason) == (Kind.BLOCK, "golden gate failed: worse")
    both = gate_action([golden_fail, shadow_fail], 1.0)
    assert both.reason == ("golden gate failed: worse; shadow gate failed: agreement 0.8 below 0.9")
    shadow_pass = GateCheck(
        Gate.SHADOW, GateVerdict.PASS, (), {"agreement": 0.95, "compared": 200, "errors": 1}
    )
    started = gate_action([golden, shadow_pass], 1.0)
    assert (started.kind, started.step, started.percent) == (Kind.STEP, 0, 1.0)
    assert started.reason == (
        "rollout started; gates passed: golden (v1 0.9644, v2 0.9667, agreement 0.9711), "
        "shadow (agreement 0.9500 over 200 compared, 1 errors)"
    )
    ungated = gate_action([], 5.0)
    assert (ungated.kind, ungated.reason, ungated.percent) == (Kind.STEP, "rollout started", 5.0)
