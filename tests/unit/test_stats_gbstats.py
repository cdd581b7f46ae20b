"""Our numbers equal GrowthBook's stats engine (gbstats 0.8.0) where the methods coincide.

gbstats pins numpy<2, so it runs in its own virtualenv (``make gbstats-venv``) through a
subprocess that reads the same sufficient statistics as JSON. Coinciding: Welch's t-test and its
intervals (absolute and relative), the GAVI confidence sequence and its p-value, the delta-method
standard errors of ratio and binary metrics, and the SRM chi-square. Not coinciding: gbstats
tests proportions with a t reference and ratio metrics with Welch's degrees of freedom where we
use the normal reference, so only their standard errors are compared there.
"""

from __future__ import annotations

import json
import math
import subprocess
from typing import Any

import numpy as np
import pytest
from support import ROOT

from experiments.stats import MeanStats, RatioStats
from experiments.stats.model import Comparison
from experiments.stats.proportion import two_proportions
from experiments.stats.ratio import ratio_test
from experiments.stats.sequential import sequential
from experiments.stats.srm import SrmPhase, sample_ratio_mismatch
from experiments.stats.welch import welch

GBSTATS_PYTHON = ROOT / ".venv-gbstats" / "bin" / "python"
SCRIPT = ROOT / "tests" / "reference" / "gbstats_reference.py"
TOL = 1e-9
ALPHA, TUNING = 0.05, 8000.0


def gbstats(request: dict[str, Any]) -> dict[str, Any]:
    if not GBSTATS_PYTHON.exists():
        pytest.fail(f"{GBSTATS_PYTHON} missing: run `make gbstats-venv` (gbstats needs numpy<2)")
    done = subprocess.run(
        [str(GBSTATS_PYTHON), str(SCRIPT)], input=json.dumps(request), capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def mean_case(kind: str, a: MeanStats, b: MeanStats) -> dict[str, Any]:
    def dump(s: MeanStats) -> dict[str, float]:
        return {"n": s.n, "sum": s.sum, "sum_sq": s.sum_sq}

    return {"type": kind, "a": dump(a), "b": dump(b), "alpha": ALPHA, "tuning": TUNING}


def ratio_case(a: RatioStats, b: RatioStats) -> dict[str, Any]:
    def dump(s: RatioStats) -> dict[str, float]:
        return {
            k: getattr(s, k)
            for k in ("n", "num_sum", "num_sum_sq", "den_sum", "den_sum_sq", "cross")
        }

    return {"type": "ratio", "a": dump(a), "b": dump(b), "alpha": ALPHA, "tuning": TUNING}


def same(a: float | None, b: float) -> None:
    assert a is not None and math.isclose(a, b, rel_tol=TOL, abs_tol=TOL), (a, b)


rng = np.random.default_rng(5)
CONT = (
    MeanStats.from_values(rng.gamma(2.0, 3.0, 3000)),
    MeanStats.from_values(rng.gamma(2.1, 3.0, 3100)),
)
BIN = (MeanStats(5000, 610, 610), MeanStats(5100, 700, 700))
den_a, den_b = rng.poisson(4, 2000) + 1, rng.poisson(4, 2100) + 1
RATIO = (
    RatioStats.from_values(rng.binomial(den_a, 0.2), den_a),
    RatioStats.from_values(rng.binomial(den_b, 0.22), den_b),
)


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return gbstats(
        {
            "cases": [mean_case("continuous", *CONT), mean_case("binary", *BIN), ratio_case(*RATIO)],
            "srm": [{"users": [5000, 5400], "weights": [0.5, 0.5]}, {"users": [900, 100, 0], "weights": [9, 1, 0]}],
        }
    )  # fmt: skip


def test_welch_and_confidence_sequence_equal_gbstats(reference: dict[str, Any]) -> None:
    ours = welch(*CONT, ALPHA)
    seq = sequential(ours, TUNING)
    theirs = reference["cases"][0]
    for diff, ours_effect, seq_effect in (
        ("absolute", ours.absolute, seq.absolute),
        ("relative", ours.relative, seq.relative),
    ):
        fixed, sequential_ = theirs[diff]["fixed"], theirs[diff]["sequential"]
        same(ours_effect.estimate, fixed["expected"])
        same(ours_effect.ci.low, fixed["ci"][0])
        same(ours_effect.ci.high, fixed["ci"][1])
        same(seq_effect.ci.low, sequential_["ci"][0])
        same(seq_effect.ci.high, sequential_["ci"][1])
    same(ours.p_value, theirs["absolute"]["fixed"]["p_value"])
    same(seq.p_value, theirs["absolute"]["sequential"]["p_value"])


def check_standard_errors(ours: Comparison, theirs: dict[str, Any]) -> None:
    same(ours.absolute.estimate, theirs["absolute"]["fixed"]["expected"])
    same(ours.absolute.se, theirs["absolute"]["fixed"]["sd"])
    same(ours.relative.estimate, theirs["relative"]["fixed"]["expected"])
    same(ours.relative.se, theirs["relative"]["fixed"]["sd"])
    seq = sequential(ours, TUNING)  # GAVI needs only estimate, variance and N: equal again
    same(seq.absolute.ci.low, theirs["absolute"]["sequential"]["ci"][0])
    same(seq.relative.ci.high, theirs["relative"]["sequential"]["ci"][1])
    same(seq.p_value, theirs["absolute"]["sequential"]["p_value"])


def test_binary_and_ratio_standard_errors_equal_gbstats(reference: dict[str, Any]) -> None:
    check_standard_errors(two_proportions(*BIN, ALPHA), reference["cases"][1])
    check_standard_errors(ratio_test(*RATIO, ALPHA), reference["cases"][2])


def test_srm_equals_gbstats(reference: dict[str, Any]) -> None:
    skewed = sample_ratio_mismatch(
        [SrmPhase(label="a", expected={"a": 0.5, "b": 0.5}, observed={"a": 5000, "b": 5400})]
    )
    same(skewed.p_value, reference["srm"][0])
    ramp = sample_ratio_mismatch(
        [
            SrmPhase(
                label="r", expected={"a": 9, "b": 1, "c": 0}, observed={"a": 900, "b": 100, "c": 0}
            )
        ]
    )
    same(ramp.phases[0].p_value, reference["srm"][1])
