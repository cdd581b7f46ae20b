"""The delta method for a relative lift: Var(T/C - 1) ~ Var(T)/C^2 + T^2 Var(C)/C^4.

T and C are independent estimates (different users), so there is no covariance term. The same
first-order expansion gbstats uses (``frequentist_variance(relative=True)``); reference:
Deng, Knoblich & Lu, "Applying the Delta Method in Metric Analytics", KDD 2018, section 3.
"""

from __future__ import annotations


def relative_lift(mean_c: float, mean_t: float) -> float | None:
    """T / C - 1, or None when the control mean is 0 (no relative change is defined)."""
    if mean_c == 0:
        return None
    return mean_t / mean_c - 1


def relative_variance(mean_c: float, var_c: float, mean_t: float, var_t: float) -> float | None:
    """Variance of T/C - 1 from the means and the variances *of the means*."""
    if mean_c == 0:
        return None
    return var_t / mean_c**2 + mean_t**2 * var_c / mean_c**4
