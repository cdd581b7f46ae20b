"""The pure halves of the gates: shadow health and the golden-set verdict, with exact numbers;
the shadow and golden schema fields; the golden file's loader and the candidate choice."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
from support import digits_flag

from flags.errors import FlagValidationError
from flags.schema import Shadow, parse_flag
from rollout.golden import VersionRun, judge, percentile_ms
from rollout.golden_runner import GoldenError, golden_file, load_golden, pick_candidate
from rollout.shadow_gate import ShadowVerdict, shadow_health
from signals.model import VersionStats


def stats(**results: int) -> VersionStats:
    return VersionStats(sum(results.values()), MappingProxyType(results))


def test_shadow_health_passes_fails_and_waits_on_exact_counts() -> None:
    spec = Shadow(variant="c", percent=10, min_agreement=0.9, max_error_rate=0.05, min_compared=100)
    ok = shadow_health(stats(AGREE=95, DISAGREE=5, UNAVAILABLE=5), spec)
    assert ok.verdict is ShadowVerdict.PASS
    assert (ok.calls, ok.compared, ok.agreed, ok.errors) == (105, 100, 95, 5)
    assert ok.agreement == 0.95
    assert ok.error_rate == 5 / 105
    low = shadow_health(stats(AGREE=89, DISAGREE=11), spec)
    assert low.verdict is ShadowVerdict.FAIL
    assert low.reasons == ("agreement 0.8900 (89/100) below min_agreement 0.9",)
    errors = shadow_health(stats(AGREE=100, DEADLINE_EXCEEDED=6), spec)
    assert errors.verdict is ShadowVerdict.FAIL
    assert "error rate 0.0566 (6/106)" in errors.reasons[0]
    early = shadow_health(stats(AGREE=50), spec)
    assert early.verdict is ShadowVerdict.WAIT
    assert early.reasons == (
        "50 shadow calls, 100 needed to judge errors",
        "50 answers compared, 100 needed",
    )


def test_shadow_health_breach_wins_over_waiting_and_ok_is_not_an_error() -> None:
    spec = Shadow(variant="c", percent=10, min_agreement=0.5, min_compared=10)
    # 20 calls, all failed: the error rule is judged and breached, agreement cannot be judged.
    assert shadow_health(stats(UNAVAILABLE=20), spec).verdict is ShadowVerdict.FAIL
    # A recorder writing OK or CANCELLED never counts as a shadow error.
    health = shadow_health(stats(AGREE=10, OK=3, CANCELLED=2), spec)
    assert health.errors == 0
    # No agreement requirement (min_agreement 0): only errors and volume are judged.
    free = Shadow(variant="c", percent=10, min_compared=0)
    assert shadow_health(stats(DISAGREE=1), free).verdict is ShadowVerdict.PASS
    assert shadow_health(stats(), free).verdict is ShadowVerdict.WAIT  # nothing measured yet


def run(version: str, predictions: list[int | None], ms: list[float] | None = None) -> VersionRun:
    seconds = tuple(x / 1000 for x in (ms or [1.0] * len(predictions)))
    return VersionRun(f"v{version}", "m", version, tuple(predictions), seconds)


def test_golden_verdict_exact_numbers() -> None:
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    control = run("1", [0, 1, 2, 3, 4, 5, 6, 7, 8, 0])  # 9/10
    same_drop = run("2", [0, 1, 2, 3, 4, 5, 6, 7, 0, 0])  # 8/10: drop 0.1
    result = judge("f", labels, control, same_drop, max_accuracy_drop=0.1)
    assert result.passed and result.verdict == "pass"
    assert (result.control.correct, result.candidate.correct) == (9, 8)
    assert result.agreement == 0.9
    assert result.accuracy_drop == pytest.approx(0.1)
    worse = judge("f", labels, control, same_drop, max_accuracy_drop=0.05)
    assert not worse.passed
    assert worse.reasons == (
        "candidate accuracy 0.8000 is 0.1000 below control's 0.9000 (max_accuracy_drop 0.05)",
    )
    failing = judge("f", labels, control, run("2", [*labels[:9], None]), max_accuracy_drop=0.5)
    assert failing.reasons == ("candidate version 2 failed on 1 of 10 samples",)
    assert failing.to_json()["candidate"]["errors"] == 1
    assert failing.agreement == 0.9  # the failed sample is not an agreement


def test_latency_percentiles_are_nearest_rank() -> None:
    assert percentile_ms([0.001 * i for i in range(1, 101)], 0.5) == pytest.approx(50.0)
    assert percentile_ms([0.001 * i for i in range(1, 101)], 0.99) == pytest.approx(99.0)
    assert percentile_ms([], 0.5) is None


def test_shadow_and_golden_fields_are_validated() -> None:
    doc = digits_flag()
    doc["shadow"] = {"variant": "candidate", "percent": 5, "min_agreement": 0.95,
                     "max_error_rate": 0.02, "min_compared": 500, "compare": "argmax",
                     "output": "probabilities", "tolerance": 0.01}  # fmt: skip
    doc["golden"] = {"file": "digits/golden.npz", "max_accuracy_drop": 0.02}
    spec = parse_flag(doc, key="digits")
    assert spec.shadow is not None and spec.shadow.min_compared == 500
    assert spec.golden is not None and spec.golden.max_accuracy_drop == 0.02
    assert parse_flag(spec.to_json(), key="digits") == spec  # round-trips
    bad = digits_flag()
    bad["shadow"] = {"variant": "candidate", "percent": 5, "min_agreement": 1.5,
                     "compare": "cosine", "min_compared": -1}  # fmt: skip
    bad["golden"] = {"file": "golden.csv", "max_accuracy_drop": -0.1}
    with pytest.raises(FlagValidationError) as caught:
        parse_flag(bad, key="digits")
    text = "\n".join(caught.value.issues)
    for path in ("shadow.min_agreement", "shadow.compare", "shadow.min_compared", "golden.file",
                 "golden.max_accuracy_drop"):  # fmt: skip
        assert path in text, text


def test_golden_file_resolution_and_candidate_choice(tmp_path: Path) -> None:
    spec = parse_flag(digits_flag(), key="digits")
    assert golden_file(spec, tmp_path) == tmp_path / "digits" / "golden.npz"
    assert golden_file(spec, tmp_path, Path("/x.npz")) == Path("/x.npz")
    doc = digits_flag(golden={"file": "sets/g.npz"})
    assert golden_file(parse_flag(doc, key="digits"), tmp_path) == tmp_path / "sets" / "g.npz"
    assert pick_candidate(spec) == "candidate"  # the ramp's variant
    with pytest.raises(GoldenError, match="no variant 'nope'"):
        pick_candidate(spec, "nope")
    with pytest.raises(GoldenError, match="is the default variant"):
        pick_candidate(spec, "control")


def test_golden_loader_says_what_is_wrong(tmp_path: Path) -> None:
    good = tmp_path / "g.npz"
    np.savez(good, pixels=np.zeros((3, 64), np.float32), labels=np.array([1, 2, 3]))
    loaded = load_golden(good)
    assert loaded.labels == (1, 2, 3) and list(loaded.inputs) == ["pixels"]
    cases = {
        "missing.npz": "not found",
        "nolabels.npz": "no `labels` array",
        "rows.npz": "one row per label",
        "text.npz": "not a readable .npz",
    }
    np.savez(tmp_path / "nolabels.npz", pixels=np.zeros((3, 64), np.float32))
    np.savez(tmp_path / "rows.npz", pixels=np.zeros((2, 64), np.float32), labels=np.arange(3))
    (tmp_path / "text.npz").write_text("not a zip")
    for name, message in cases.items():
        with pytest.raises(GoldenError, match=message):
            load_golden(tmp_path / name)
