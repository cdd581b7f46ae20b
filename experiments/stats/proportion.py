"""Binary metrics: the two-proportion z-test and Wald intervals for the difference and the lift.

The test statistic uses the pooled proportion under H0 (p_c = p_t), as statsmodels'
``proportions_ztest`` does; the intervals use the unpooled standard error, as
``confint_proportions_2indep(method="wald")`` does (Agresti, *Categorical Data Analysis*, 3rd
ed., section 1.4 and 2.2). The two can disagree at the very edge of significance; the verdict
follows the p-value.
"""

from __future__ import annotations

import math

from scipy import stats

from experiments.stats.delta import relative_lift, relative_variance
from experiments.stats.model import Arm, Comparison, effect, finite, unestimable, unknown_effect
from experiments.stats.summary import MeanStats

TEST_NAME = "two-proportion z-test"


def two_proportions(control: MeanStats, treatment: MeanStats, alpha: float = 0.05) -> Comparison:
    """Treatment vs control on a 0/1 metric (``sum`` users had the event out of ``n``)."""
    control.check_binary()
    treatment.check_binary()
    arms = {"control": Arm(n=control.n, mean=control.mean if control.n else None)}
    arms["treatment"] = Arm(n=treatment.n, mean=treatment.mean if treatment.n else None)
    if control.n == 0 or treatment.n == 0:
        return unestimable(
            TEST_NAME, alpha, arms["control"], arms["treatment"], "a variant has no users yet"
        )
    p_c, p_t = control.mean, treatment.mean
    var_c = p_c * (1 - p_c) / control.n  # variance of each estimated proportion
    var_t = p_t * (1 - p_t) / treatment.n
    z_crit = float(stats.norm.ppf(1 - alpha / 2))
    diff = p_t - p_c
    se = math.sqrt(var_c + var_t)
    pooled = (control.sum + treatment.sum) / (control.n + treatment.n)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / control.n + 1 / treatment.n))
    statistic = diff / se0 if se0 > 0 else None
    p_value = float(2 * stats.norm.sf(abs(statistic))) if statistic is not None else None
    lift = relative_lift(p_c, p_t)
    lift_var = relative_variance(p_c, var_c, p_t, var_t)
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
        statistic=finite(statistic) if statistic is not None else None,
        p_value=p_value,
        note=None if statistic is not None else "no variance: every user has the same value",
    )
