"""Power and sample size for a two-variant comparison, and the days left at the observed traffic.

Users per variant for a two-sided test at level alpha to detect a difference delta with the
given power, variances v_c and v_t per user:

    n = (z_{1-alpha/2} + z_{power})^2 * (v_c + v_t) / delta^2

(Chow, Shao & Wang, *Sample Size Calculations in Clinical Research*, 2nd ed., 4.2). It is
statsmodels' ``NormalIndPower`` with the standardised effect delta / sqrt((v_c + v_t) / 2),
which also counts the (negligible) opposite tail. Binary metrics: v = p (1 - p) for the baseline
p and for p + delta. Continuous and ratio metrics: the baseline's per-user variance on both sides.
The formula is for a fixed-horizon test: a confidence sequence needs more users for the same
power (docs/experiments.md gives the factor measured by simulation).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict
from scipy import optimize, stats
from statsmodels.stats.power import NormalIndPower

from experiments.stats.model import StatsInputError
from experiments.stats.sequential import half_width


class SampleSize(BaseModel):
    model_config = ConfigDict(frozen=True)

    per_variant: int
    baseline: float
    delta: float  # absolute difference to detect
    alpha: float
    power: float


def absolute_delta(baseline: float, mde: float, relative: bool) -> float:
    """The MDE as an absolute difference (relative MDEs are shares of the baseline)."""
    delta = abs(baseline) * mde if relative else mde
    if delta <= 0 or not math.isfinite(delta):
        raise StatsInputError(
            f"MDE {mde} on baseline {baseline} gives no detectable difference "
            "(a relative MDE needs a non-zero baseline)"
        )
    return delta


def _variances(binary: bool, baseline: float, delta: float, variance: float | None) -> float:
    if binary:
        treated = baseline + delta
        if not 0 <= baseline <= 1 or not 0 <= treated <= 1:
            raise StatsInputError(f"binary baseline {baseline} + MDE {delta} must stay within 0..1")
        return baseline * (1 - baseline) + treated * (1 - treated)
    if variance is None or variance < 0 or not math.isfinite(variance):
        raise StatsInputError("a continuous or ratio metric needs its per-user variance")
    return 2 * variance


def _standardised(binary: bool, baseline: float, delta: float, variance: float | None) -> float:
    total = _variances(binary, baseline, delta, variance)
    if total == 0:
        raise StatsInputError("zero variance: every user has the same value, nothing to power")
    return delta / math.sqrt(total / 2)


def sample_size(
    *,
    baseline: float,
    mde: float,
    relative: bool = True,
    alpha: float = 0.05,
    power: float = 0.8,
    binary: bool = True,
    variance: float | None = None,
) -> SampleSize:
    """Users per variant (rounded up) to detect the MDE with the given power."""
    delta = absolute_delta(baseline, mde, relative)
    effect = _standardised(binary, baseline, delta, variance)
    n = NormalIndPower().solve_power(
        effect_size=effect, alpha=alpha, power=power, ratio=1.0, alternative="two-sided"
    )
    return SampleSize(
        per_variant=math.ceil(float(n)), baseline=baseline, delta=delta, alpha=alpha, power=power
    )


def sequential_sample_size(
    *,
    baseline: float,
    mde: float,
    relative: bool = True,
    alpha: float = 0.05,
    power: float = 0.8,
    binary: bool = True,
    variance: float | None = None,
    tuning: float = 5000.0,
) -> SampleSize:
    """Users per variant for the confidence sequence to exclude 0 with the given power.

    Solves delta = w(n) + z_power * se(n) for n, where w is the GAVI half-width at N = 2n users
    and se(n) = sqrt((v_c + v_t) / n): the same normal approximation as the fixed design, with
    the sequence's wider half-width in place of z_{1-alpha/2} * se.
    """
    delta = absolute_delta(baseline, mde, relative)
    total = _variances(binary, baseline, delta, variance)
    if total == 0:
        raise StatsInputError("zero variance: every user has the same value, nothing to power")
    z_power = float(stats.norm.ppf(power))

    def gap(n: float) -> float:
        return half_width(total / n, 2 * n, alpha, tuning) + z_power * math.sqrt(total / n) - delta

    high = 2.0
    while gap(high) > 0:
        high *= 2
        if high > 1e13:
            raise StatsInputError(f"MDE {delta} is too small to detect with any sample size")
    n = optimize.brentq(gap, high / 2 if high > 2 else 1.0, high, xtol=1e-6)
    return SampleSize(
        per_variant=math.ceil(n), baseline=baseline, delta=delta, alpha=alpha, power=power
    )


def achieved_power(
    *,
    n_per_variant: int,
    baseline: float,
    delta: float,
    alpha: float = 0.05,
    binary: bool = True,
    variance: float | None = None,
) -> float:
    """Power of the fixed-horizon test with ``n_per_variant`` users to detect ``delta``."""
    if n_per_variant < 2:
        return 0.0
    effect = _standardised(binary, baseline, delta, variance)
    return float(
        NormalIndPower().power(
            effect_size=effect, nobs1=n_per_variant, alpha=alpha, ratio=1.0,
            alternative="two-sided",
        )
    )  # fmt: skip


def days_remaining(needed_per_variant: int, observed: list[int], days_run: float) -> float | None:
    """Days until the smallest variant reaches ``needed_per_variant`` at its rate so far.

    None when no rate is known yet (no days run or a variant without users).
    """
    if not observed:
        return None
    smallest = min(observed)
    if smallest >= needed_per_variant:
        return 0.0
    if days_run <= 0 or smallest == 0:
        return None
    rate = smallest / days_run
    return (needed_per_variant - smallest) / rate
