"""Ratio metrics (e.g. downloads per generation): a z-test on the delta-method variance.

Per variant, R = sum(m) / sum(d) with Var(R) from a first-order Taylor expansion around the
means (Deng, Knoblich & Lu, KDD 2018, eq. 2), which accounts for users being the unit of
randomisation while the ratio counts events. The difference R_t - R_c is tested with a normal
reference (large-sample), the relative lift uses the same delta method once more.
"""

from __future__ import annotations

import math

from scipy import stats

from experiments.stats.delta import relative_lift, relative_variance
from experiments.stats.model import Arm, Comparison, effect, unestimable, unknown_effect
from experiments.stats.summary import RatioStats

TEST_NAME = "delta-method z-test (ratio)"


def ratio_test(control: RatioStats, treatment: RatioStats, alpha: float = 0.05) -> Comparison:
    defined = control.den_sum != 0 and treatment.den_sum != 0
    arms = {
        "control": Arm(n=control.n, mean=control.mean if control.den_sum else None),
        "treatment": Arm(n=treatment.n, mean=treatment.mean if treatment.den_sum else None),
    }
    var_c, var_t = control.variance_of_mean, treatment.variance_of_mean
    if not defined or control.n < 2 or treatment.n < 2 or var_c + var_t == 0:
        note = (
            "a variant's denominator is 0 (no users with the denominator event yet)"
            if not defined
            else "not enough users or no variance yet"
        )
        return unestimable(TEST_NAME, alpha, arms["control"], arms["treatment"], note)
    z_crit = float(stats.norm.ppf(1 - alpha / 2))
    diff = treatment.mean - control.mean
    se = math.sqrt(var_c + var_t)
    z = diff / se
    lift = relative_lift(control.mean, treatment.mean)
    lift_var = relative_variance(control.mean, var_c, treatment.mean, var_t)
    relative = (
        unknown_effect()
        if lift is None or lift_var is None
        else effect(lift, math.sqrt(lift_var), z_crit * math.sqrt(lift_var))
    )
    return Comparison(
        test=TEST_NAME,
        alpha=alpha,
        control=arms["control"],
        treatment=arms["treatment"],
        absolute=effect(diff, se, z_crit * se),
        relative=relative,
        statistic=z,
        p_value=float(2 * stats.norm.sf(abs(z))),
    )
