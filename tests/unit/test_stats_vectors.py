"""Each test against statsmodels / scipy on fixed vectors, to 1e-9, and its unhappy paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from experiments.stats import MeanStats, RatioStats, StatsInputError
from experiments.stats.corrections import adjust
from experiments.stats.power import achieved_power, days_remaining, sample_size
from experiments.stats.proportion import two_proportions
from experiments.stats.ratio import ratio_test
from experiments.stats.sequential import half_width, p_value, sequential
from experiments.stats.srm import SrmPhase, sample_ratio_mismatch
from experiments.stats.welch import welch

TOL = 1e-9
RNG = np.random.default_rng(20240610)
CONTROL = RNG.lognormal(mean=1.0, sigma=0.8, size=1200)
TREATMENT = RNG.lognormal(mean=1.05, sigma=0.9, size=1100)


def close(a: float | None, b: float) -> bool:
    assert a is not None
    return math.isclose(a, b, rel_tol=TOL, abs_tol=TOL)


def test_two_proportions_matches_statsmodels() -> None:
    control, treatment = MeanStats(4000, 412, 412), MeanStats(3900, 468, 468)
    result = two_proportions(control, treatment, alpha=0.05)
    z, p = proportions_ztest([468, 412], [3900, 4000])
    low, high = confint_proportions_2indep(468, 3900, 412, 4000, method="wald", compare="diff")
    assert close(result.statistic, z) and close(result.p_value, p)
    assert close(result.absolute.ci.low, low) and close(result.absolute.ci.high, high)
    # Relative lift, delta method: Var(pt/pc) ~ vt/pc^2 + pt^2 vc/pc^4.
    pc, pt = 412 / 4000, 468 / 3900
    var = pt * (1 - pt) / 3900 / pc**2 + pt**2 * (pc * (1 - pc) / 4000) / pc**4
    zc = sps.norm.ppf(0.975)
    assert close(result.relative.estimate, pt / pc - 1)
    assert close(result.relative.ci.low, pt / pc - 1 - zc * math.sqrt(var))
    assert result.significant == (p < 0.05)


def test_welch_matches_scipy_and_statsmodels() -> None:
    result = welch(MeanStats.from_values(CONTROL), MeanStats.from_values(TREATMENT), alpha=0.1)
    reference = sps.ttest_ind(TREATMENT, CONTROL, equal_var=False)
    low, high = CompareMeans(DescrStatsW(TREATMENT), DescrStatsW(CONTROL)).tconfint_diff(
        alpha=0.1, usevar="unequal"
    )
    assert close(result.statistic, reference.statistic)
    assert close(result.p_value, reference.pvalue)
    assert close(result.dof, reference.df)
    assert close(result.absolute.ci.low, low) and close(result.absolute.ci.high, high)
    mc, mt = CONTROL.mean(), TREATMENT.mean()
    vc, vt = CONTROL.var(ddof=1) / CONTROL.size, TREATMENT.var(ddof=1) / TREATMENT.size
    se_rel = math.sqrt(vt / mc**2 + mt**2 * vc / mc**4)
    tc = sps.t.ppf(0.95, reference.df)
    assert close(result.relative.ci.high, mt / mc - 1 + tc * se_rel)


def test_ratio_delta_method_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(7)
    den_c, den_t = rng.poisson(3, 900) + 1, rng.poisson(3.2, 950) + 1
    num_c, num_t = rng.binomial(den_c, 0.3), rng.binomial(den_t, 0.33)
    result = ratio_test(RatioStats.from_values(num_c, den_c), RatioStats.from_values(num_t, den_t))

    def delta_var(m: np.ndarray, d: np.ndarray) -> float:
        cov = np.cov(m, d, ddof=1)
        mm, md = m.mean(), d.mean()
        return float(
            (cov[0, 0] / md**2 - 2 * cov[0, 1] * mm / md**3 + mm**2 * cov[1, 1] / md**4) / m.size
        )

    r_c, r_t = num_c.sum() / den_c.sum(), num_t.sum() / den_t.sum()
    se = math.sqrt(delta_var(num_c, den_c) + delta_var(num_t, den_t))
    assert close(result.absolute.estimate, r_t - r_c)
    assert close(result.absolute.se, se)
    assert close(result.p_value, 2 * sps.norm.sf(abs((r_t - r_c) / se)))


def test_confidence_sequence_formula_pinned() -> None:
    # Half-width at N = tau = 5000, alpha 0.05, per-estimate variance 1e-4: from the formula.
    rho2 = (-2 * math.log(0.05) + math.log(-2 * math.log(0.05) + 1)) / 5000
    expected = math.sqrt(1e-4 * 5000) * math.sqrt(
        2 * (5000 * rho2 + 1) / (5000**2 * rho2) * math.log(math.sqrt(5000 * rho2 + 1) / 0.05)
    )
    assert close(half_width(1e-4, 5000, 0.05, 5000.0), expected)
    # Wider than the fixed-horizon interval (the price of looking any time).
    assert half_width(1e-4, 5000, 0.05, 5000.0) > sps.norm.ppf(0.975) * 0.01
    # p < alpha exactly when the sequence excludes 0.
    for estimate in (0.02, 0.03, 0.04):
        excluded = abs(estimate) > half_width(1e-4, 5000, 0.05, 5000.0)
        assert (p_value(estimate, 1e-4, 5000, 0.05, 5000.0) < 0.05) == excluded
    assert p_value(0.0, 1e-4, 5000, 0.05, 5000.0) == 1.0


def test_sequential_keeps_the_estimates_and_widens_the_interval() -> None:
    fixed = two_proportions(MeanStats(4000, 412, 412), MeanStats(3900, 468, 468))
    seq = sequential(fixed, tuning=5000)
    assert seq.absolute.estimate == fixed.absolute.estimate
    assert seq.absolute.ci.low is not None and fixed.absolute.ci.low is not None
    assert seq.absolute.ci.low < fixed.absolute.ci.low
    assert seq.p_value is not None and fixed.p_value is not None and seq.p_value > fixed.p_value
    with pytest.raises(ValueError, match="positive number of users"):
        sequential(fixed, tuning=0)


def test_srm_per_phase_and_combined() -> None:
    ramp = [
        SrmPhase(label="10%", expected={"control": 90, "candidate": 10}, observed={"control": 9000, "candidate": 1000}),
        SrmPhase(label="50%", expected={"control": 50, "candidate": 50}, observed={"control": 5000, "candidate": 5200}),
    ]  # fmt: skip
    result = sample_ratio_mismatch(ramp)
    assert close(result.phases[0].chi2, 0.0) and result.phases[0].p_value == 1.0
    chi2, p = sps.chisquare([5000, 5200], [5100, 5100])
    assert close(result.phases[1].chi2, chi2) and close(result.phases[1].p_value, p)
    assert close(result.phases[1].chi2, 2 * 100**2 / 5100)
    assert close(result.p_value, sps.chi2.sf(chi2, 2)) and not result.invalid
    # Checking all users against today's 50/50 would have called this healthy ramp broken.
    pooled = sps.chisquare([14000, 6200])
    assert pooled.pvalue < 0.001


def test_srm_flags_a_broken_split_and_stray_users() -> None:
    broken = SrmPhase(label="50%", expected={"a": 1, "b": 1}, observed={"a": 5000, "b": 5400})
    assert sample_ratio_mismatch([broken]).invalid
    stray = SrmPhase(label="0%", expected={"a": 1, "b": 0}, observed={"a": 100, "b": 3})
    result = sample_ratio_mismatch([stray])
    assert result.invalid and result.chi2 is None and "b" in (result.phases[0].note or "")
    with pytest.raises(StatsInputError, match="all zero"):
        sample_ratio_mismatch([SrmPhase(label="x", expected={"a": 0}, observed={"a": 1})])
    with pytest.raises(StatsInputError, match="-1 users"):
        sample_ratio_mismatch([SrmPhase(label="x", expected={"a": 1}, observed={"a": -1})])


def test_sample_size_matches_the_closed_form() -> None:
    size = sample_size(baseline=0.10, mde=0.10, relative=True, alpha=0.05, power=0.8)
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    closed = z**2 * (0.1 * 0.9 + 0.11 * 0.89) / 0.01**2
    assert size.per_variant == math.ceil(closed) == 14749
    assert achieved_power(n_per_variant=size.per_variant, baseline=0.1, delta=0.01) >= 0.8
    assert achieved_power(n_per_variant=size.per_variant - 2, baseline=0.1, delta=0.01) < 0.8
    continuous = sample_size(baseline=20.0, mde=1.0, relative=False, binary=False, variance=64.0)
    assert continuous.per_variant == math.ceil(z**2 * 128 / 1.0)
    with pytest.raises(StatsInputError, match=r"within 0\.\.1"):
        sample_size(baseline=0.95, mde=0.1, relative=False)
    with pytest.raises(StatsInputError, match="per-user variance"):
        sample_size(baseline=1.0, mde=0.1, binary=False)
    with pytest.raises(StatsInputError, match="non-zero baseline"):
        sample_size(baseline=0.0, mde=0.1)


def test_days_remaining_at_the_observed_rate() -> None:
    assert days_remaining(14749, [5000, 4900], days_run=5) == pytest.approx((14749 - 4900) / 980)
    assert days_remaining(100, [150, 120], days_run=1) == 0.0
    assert days_remaining(100, [0, 10], days_run=1) is None
    assert days_remaining(100, [10, 10], days_run=0) is None


def test_corrections_match_statsmodels_and_skip_untestable() -> None:
    assert adjust([0.01, 0.04, 0.03], "holm", 0.05) == pytest.approx([0.03, 0.06, 0.06], abs=TOL)
    assert adjust([0.01, 0.04, 0.03], "fdr_bh", 0.05) == pytest.approx([0.03, 0.04, 0.04], abs=TOL)
    assert adjust([0.01, None, 0.03], "holm", 0.05) == [0.02, None, 0.03]
    assert adjust([0.2, 0.01], "none", 0.05) == [0.2, 0.01]
    assert adjust([None], "holm", 0.05) == [None]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: MeanStats(-1, 0, 0), "non-negative integer"),
        (lambda: MeanStats(10, float("nan"), 1), "finite"),
        (lambda: MeanStats(10, 5, 1), "too small"),
        (lambda: MeanStats(0, 1, 1), "n = 0"),
        (lambda: two_proportions(MeanStats(10, -1, 1), MeanStats(10, 1, 1)), "between 0 and n"),
        (lambda: two_proportions(MeanStats(10, 3, 5), MeanStats(10, 1, 1)), "must equal sum"),
        (lambda: RatioStats(3, 3, 3, 3, 3, 10), "Cauchy-Schwarz"),
        (lambda: RatioStats.from_values([1, 2], [1]), "one value per user"),
    ],
)
def test_impossible_statistics_are_refused_with_the_reason(build: object, message: str) -> None:
    with pytest.raises(StatsInputError, match=message):
        build()  # type: ignore[operator]


def test_degenerate_data_gives_no_numbers_rather_than_nan() -> None:
    empty = two_proportions(MeanStats(0, 0, 0), MeanStats(10, 1, 1))
    assert empty.p_value is None and empty.note == "a variant has no users yet"
    flat = welch(MeanStats(5, 10, 20), MeanStats(5, 10, 20))
    assert flat.p_value is None and "no variance" in (flat.note or "")
    zero_control = two_proportions(MeanStats(100, 0, 0), MeanStats(100, 5, 5))
    assert zero_control.relative.estimate is None and zero_control.p_value is not None
    no_den = ratio_test(RatioStats(3, 0, 0, 0, 0, 0), RatioStats(3, 1, 1, 1, 1, 1))
    assert no_den.p_value is None and "denominator" in (no_den.note or "")
    assert sequential(no_den).absolute.estimate is None
    assert zero_control.model_dump_json()  # JSON-able: no NaN anywhere
