"""Simulations with fixed seeds: peeking daily is safe with the confidence sequence (and not with
the naive z-test), and the power calculation delivers the power it promises.

Users are simulated through their sufficient statistics (binomial counts; normal sums with a
chi-square sum of squares), so 1,000 experiments cost milliseconds of numpy; every look goes
through the real test functions. Numbers measured here are in docs/experiments.md.
"""

from __future__ import annotations

import numpy as np

from experiments.stats import MeanStats
from experiments.stats.power import sample_size, sequential_sample_size
from experiments.stats.proportion import two_proportions
from experiments.stats.sequential import sequential
from experiments.stats.welch import welch

ALPHA = 0.05
EXPERIMENTS = 1000
DAYS = 14
USERS_PER_DAY = 500  # per variant


def aa_false_positive_rates(seed: int) -> tuple[float, float]:
    """Share of A/A experiments declared significant at *any* of 14 daily looks."""
    rng = np.random.default_rng(seed)
    daily = rng.binomial(USERS_PER_DAY, 0.10, size=(EXPERIMENTS, DAYS, 2))
    cumulative = daily.cumsum(axis=1)
    naive = np.zeros(EXPERIMENTS, dtype=bool)
    always_valid = np.zeros(EXPERIMENTS, dtype=bool)
    for e in range(EXPERIMENTS):
        for d in range(DAYS):
            n = USERS_PER_DAY * (d + 1)
            c, t = (float(x) for x in cumulative[e, d])
            fixed = two_proportions(MeanStats(n, c, c), MeanStats(n, t, t), ALPHA)
            naive[e] |= fixed.significant
            if not always_valid[e]:
                always_valid[e] = sequential(fixed, tuning=5000).significant
    return float(naive.mean()), float(always_valid.mean())


def test_daily_peeking_inflates_the_z_test_but_not_the_confidence_sequence() -> None:
    naive, always_valid = aa_false_positive_rates(seed=11)
    print(f"A/A, 14 daily looks: naive z-test {naive:.3f}, GAVI {always_valid:.3f}")
    assert always_valid <= ALPHA
    assert naive > 2 * ALPHA  # the inflation peeking causes


def test_binary_power_at_the_designed_sample_size() -> None:
    design = sample_size(baseline=0.10, mde=0.10, relative=True, alpha=ALPHA, power=0.8)
    n, runs = design.per_variant, 4000
    rng = np.random.default_rng(12)
    control = rng.binomial(n, 0.10, size=runs)
    treatment = rng.binomial(n, 0.11, size=runs)
    hits = seq_hits = 0
    for c, t in zip(control.tolist(), treatment.tolist(), strict=True):
        fixed = two_proportions(MeanStats(n, c, c), MeanStats(n, t, t), ALPHA)
        hits += fixed.significant
        seq_hits += sequential(fixed, tuning=2 * n).significant
    power, seq_power = hits / runs, seq_hits / runs
    print(f"binary n={n}/variant: power {power:.3f}, GAVI (tau=2n) {seq_power:.3f}")
    assert abs(power - 0.8) <= 0.03
    assert seq_power < power - 0.2  # the confidence sequence pays for its any-time validity


def test_sequential_power_at_its_own_designed_sample_size() -> None:
    tau = 40_000.0
    design = sequential_sample_size(baseline=0.10, mde=0.10, alpha=ALPHA, power=0.8, tuning=tau)
    n, runs = design.per_variant, 4000
    rng = np.random.default_rng(14)
    control = rng.binomial(n, 0.10, size=runs)
    treatment = rng.binomial(n, 0.11, size=runs)
    hits = sum(
        sequential(
            two_proportions(MeanStats(n, c, c), MeanStats(n, t, t), ALPHA), tuning=tau
        ).significant
        for c, t in zip(control.tolist(), treatment.tolist(), strict=True)
    )
    print(f"sequential design n={n}/variant (tau={tau:.0f}): power {hits / runs:.3f}")
    assert abs(hits / runs - 0.8) <= 0.03


def test_continuous_power_at_the_designed_sample_size() -> None:
    sigma, delta = 8.0, 1.0
    design = sample_size(
        baseline=20.0, mde=delta, relative=False, alpha=ALPHA, power=0.8, binary=False,
        variance=sigma**2,
    )  # fmt: skip
    n, runs = design.per_variant, 4000
    rng = np.random.default_rng(13)

    def draw(mean: float) -> list[MeanStats]:
        sums = rng.normal(n * mean, sigma * np.sqrt(n), size=runs)
        squares = sigma**2 * rng.chisquare(n - 1, size=runs) + sums**2 / n
        return [MeanStats(n, float(s), float(q)) for s, q in zip(sums, squares, strict=True)]

    hits = sum(
        welch(c, t, ALPHA).significant for c, t in zip(draw(20.0), draw(20.0 + delta), strict=True)
    )
    print(f"continuous n={n}/variant: power {hits / runs:.3f}")
    assert abs(hits / runs - 0.8) <= 0.03
