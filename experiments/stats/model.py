"""The result values every test returns: an effect with its interval, a p-value, a statistic.

Numbers a test cannot estimate (a relative lift over a control mean of zero, a p-value without
variance) are ``None`` rather than NaN or infinity, so the report is valid JSON and a renderer
shows "n/a" instead of a number that means nothing.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict


class StatsInputError(ValueError):
    """Sufficient statistics that cannot come from real data (negative n, NaN, sum > n for a
    binary metric, a variance below zero). The message says which value and why."""


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Interval(_Value):
    low: float | None
    high: float | None

    def contains(self, value: float) -> bool:
        """True when ``value`` lies inside, or when the interval is unknown (nothing excluded)."""
        if self.low is None or self.high is None:
            return True
        return self.low <= value <= self.high


class Effect(_Value):
    """A point estimate, its standard error, and its interval at the comparison's level."""

    estimate: float | None
    se: float | None
    ci: Interval


class Arm(_Value):
    n: int
    mean: float | None


class Comparison(_Value):
    """Treatment vs control on one metric with one test.

    ``absolute``: treatment - control. ``relative``: treatment / control - 1 (delta method).
    ``p_value`` is two-sided and refers to the absolute difference (no effect: difference 0).
    """

    test: str
    alpha: float
    control: Arm
    treatment: Arm
    absolute: Effect
    relative: Effect
    statistic: float | None
    p_value: float | None
    dof: float | None = None
    note: str | None = None

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < self.alpha


def finite(value: float) -> float | None:
    """``value`` as a float, or None when it is NaN or infinite."""
    value = float(value)
    return value if math.isfinite(value) else None


def unknown_effect() -> Effect:
    return Effect(estimate=None, se=None, ci=Interval(low=None, high=None))


def effect(estimate: float, se: float, half_width: float) -> Effect:
    """An effect with a symmetric interval; non-finite parts become None."""
    low = finite(estimate - half_width)
    high = finite(estimate + half_width)
    return Effect(estimate=finite(estimate), se=finite(se), ci=Interval(low=low, high=high))


def unestimable(test: str, alpha: float, control: Arm, treatment: Arm, note: str) -> Comparison:
    """A comparison the data cannot support yet (too few users, no variance): says why."""
    return Comparison(
        test=test,
        alpha=alpha,
        control=control,
        treatment=treatment,
        absolute=unknown_effect(),
        relative=unknown_effect(),
        statistic=None,
        p_value=None,
        note=note,
    )
