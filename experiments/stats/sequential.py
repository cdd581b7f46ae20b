"""Always-valid inference: GrowthBook's "GAVI" normal-mixture confidence sequence.

With N users in both variants and an effect estimate of variance V (so s^2 = N * V is the
per-user variance of the difference), the (1 - alpha) confidence sequence is

    estimate +/- sqrt(s^2) * sqrt( 2 (N rho^2 + 1) / (N^2 rho^2) * ln( sqrt(N rho^2 + 1) / alpha ) )

(Waudby-Smith et al., "Time-uniform central limit theory and asymptotic confidence sequences",
arXiv:2103.06476v7, eq. 9; Howard et al. 2021 for the normal mixture). It covers the true effect
at *every* sample size simultaneously with probability 1 - alpha, so a team may look daily
and stop whenever it excludes zero. rho sets the mixture's spread; it is chosen so that the
sequence is tightest at N = tau users (eq. 161):

    rho^2 = (-2 ln alpha + ln(-2 ln alpha + 1)) / tau

``tau`` is the plan's ``sequential_tuning`` (gbstats' ``sequential_tuning_parameter``,
default 5000): set it near the total number of users you expect. The always-valid p-value is
1 / E with the mixture e-value E = exp(rho^2 N z^2 / (2 (N rho^2 + 1))) / sqrt(N rho^2 + 1),
where z^2 N = estimate^2 N / V (eq. 155); p < alpha exactly when the sequence excludes 0.
"""

from __future__ import annotations

import math

from experiments.stats.model import Comparison, Effect, effect, finite, unknown_effect

TEST_NAME = "GAVI confidence sequence"
DEFAULT_TUNING = 5000.0


def rho_squared(alpha: float, tuning: float) -> float:
    return (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning


def half_width(variance: float, n_total: float, alpha: float, tuning: float) -> float:
    """Half-width of the confidence sequence for an estimate of variance ``variance``."""
    rho2 = rho_squared(alpha, tuning)
    s2 = variance * n_total
    factor = 2 * (n_total * rho2 + 1) / (n_total**2 * rho2)
    return math.sqrt(s2) * math.sqrt(factor * math.log(math.sqrt(n_total * rho2 + 1) / alpha))


def p_value(estimate: float, variance: float, n_total: int, alpha: float, tuning: float) -> float:
    """Always-valid p-value for "no effect" (min(1, 1/E) with the normal-mixture e-value)."""
    rho2 = rho_squared(alpha, tuning)
    st2 = estimate**2 * n_total / variance
    grown = n_total * rho2 + 1
    log_e = rho2 * st2 / (2 * grown) - 0.5 * math.log(grown)
    return 1.0 if log_e <= 0 else math.exp(-log_e)


def _sequential_effect(fixed: Effect, n_total: int, alpha: float, tuning: float) -> Effect:
    if fixed.estimate is None or fixed.se is None or fixed.se == 0:
        return unknown_effect()
    width = half_width(fixed.se**2, n_total, alpha, tuning)
    return effect(fixed.estimate, fixed.se, width)


def sequential(fixed: Comparison, tuning: float = DEFAULT_TUNING) -> Comparison:
    """The always-valid version of a fixed-horizon comparison (same estimates and variances).

    Works for every test here (proportions, Welch, ratio): GAVI needs only the estimate, its
    variance and the number of users.
    """
    if tuning <= 0 or not math.isfinite(tuning):
        raise ValueError(f"sequential tuning must be a positive number of users, got {tuning}")
    n_total = fixed.control.n + fixed.treatment.n
    absolute = _sequential_effect(fixed.absolute, n_total, fixed.alpha, tuning)
    relative = _sequential_effect(fixed.relative, n_total, fixed.alpha, tuning)
    p = None
    statistic = None
    if absolute.estimate is not None and absolute.se:
        variance = absolute.se**2
        p = p_value(absolute.estimate, variance, n_total, fixed.alpha, tuning)
        statistic = finite(absolute.estimate / absolute.se)
    return Comparison(
        test=TEST_NAME,
        alpha=fixed.alpha,
        control=fixed.control,
        treatment=fixed.treatment,
        absolute=absolute,
        relative=relative,
        statistic=statistic,
        p_value=p,
        note=fixed.note,
    )
