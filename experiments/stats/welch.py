"""Continuous metrics: Welch's t-test (unequal variances) with intervals for the difference and lift.

Statistic t = (mean_t - mean_c) / sqrt(s_t^2/n_t + s_c^2/n_c), degrees of freedom by
Welch-Satterthwaite (Welch, Biometrika 34, 1947); the p-value is scipy's
``ttest_ind_from_stats(equal_var=False)``. The relative lift's interval uses the delta-method
variance with the same t quantile, as gbstats' ``TwoSidedTTest`` does.
"""

from __future__ import annotations

import math

from scipy import stats

from experiments.stats.delta import relative_lift, relative_variance
from experiments.stats.model import Arm, Comparison, effect, finite, unestimable, unknown_effect
from experiments.stats.summary import MeanStats

TEST_NAME = "Welch t-test"


def welch_dof(var_c: float, n_c: int, var_t: float, n_t: int) -> float:
    """Welch-Satterthwaite degrees of freedom from per-user variances."""
    a, b = var_c / n_c, var_t / n_t
    return (a + b) ** 2 / (a**2 / (n_c - 1) + b**2 / (n_t - 1))


def welch(control: MeanStats, treatment: MeanStats, alpha: float = 0.05) -> Comparison:
    arms = {
        "control": Arm(n=control.n, mean=control.mean if control.n else None),
        "treatment": Arm(n=treatment.n, mean=treatment.mean if treatment.n else None),
    }
    var_c, var_t = control.variance, treatment.variance
    if control.n < 2 or treatment.n < 2 or var_c + var_t == 0:
        note = (
            "each variant needs at least two users"
            if min(control.n, treatment.n) < 2
            else "no variance: every user has the same value"
        )
        return unestimable(TEST_NAME, alpha, arms["control"], arms["treatment"], note)
    result = stats.ttest_ind_from_stats(
        treatment.mean, math.sqrt(var_t), treatment.n,
        control.mean, math.sqrt(var_c), control.n,
        equal_var=False,
    )  # fmt: skip
    dof = welch_dof(var_c, control.n, var_t, treatment.n)
    t_crit = float(stats.t.ppf(1 - alpha / 2, dof))
    vm_c, vm_t = var_c / control.n, var_t / treatment.n
    se = math.sqrt(vm_c + vm_t)
    lift = relative_lift(control.mean, treatment.mean)
    lift_var = relative_variance(control.mean, vm_c, treatment.mean, vm_t)
    relative = (
        unknown_effect()
        if lift is None or lift_var is None
        else effect(lift, math.sqrt(lift_var), t_crit * math.sqrt(lift_var))
    )
    return Comparison(
        test=TEST_NAME,
        alpha=alpha,
        control=arms["control"],
        treatment=arms["treatment"],
        absolute=effect(treatment.mean - control.mean, se, t_crit * se),
        relative=relative,
        statistic=finite(float(result.statistic)),
        p_value=finite(float(result.pvalue)),
        dof=finite(dof),
    )
