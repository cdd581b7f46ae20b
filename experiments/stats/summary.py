"""Sufficient statistics per variant and metric: what the SQL over per-user aggregates returns.

A binary or continuous metric needs ``n``, ``sum`` and ``sum_sq`` (of the per-user values); a
ratio metric (per-user numerator over per-user denominator) also needs the sums of each part and
the cross-product sum. Values are checked once, at construction, so the tests can trust them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from experiments.stats.model import StatsInputError

# sum_sq * n may fall short of sum**2 by rounding when all values are (nearly) equal.
_RELATIVE_SLACK = 1e-9


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise StatsInputError(f"{name} must be a finite number, got {value!r}")


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise StatsInputError(f"n must be a non-negative integer (users), got {n!r}")


def _variance(n: int, total: float, total_sq: float) -> float:
    """Sample variance (n - 1 in the denominator) from sums; 0 for fewer than two users."""
    if n < 2:
        return 0.0
    return max(0.0, (total_sq - total * total / n) / (n - 1))


@dataclass(frozen=True, slots=True)
class MeanStats:
    """n users, the sum and the sum of squares of their per-user values (binary: 0/1)."""

    n: int
    sum: float
    sum_sq: float

    def __post_init__(self) -> None:
        _check_n(self.n)
        _check_finite("sum", self.sum)
        _check_finite("sum_sq", self.sum_sq)
        if self.sum_sq < 0:
            raise StatsInputError(f"sum_sq must be >= 0 (a sum of squares), got {self.sum_sq}")
        if self.n == 0 and (self.sum != 0 or self.sum_sq != 0):
            raise StatsInputError("n = 0 with a non-zero sum: sums of no users are 0")
        if self.n and self.sum * self.sum > self.sum_sq * self.n * (1 + _RELATIVE_SLACK) + 1e-12:
            raise StatsInputError(
                f"sum_sq {self.sum_sq} is too small for sum {self.sum} over n {self.n}: "
                "sum**2 <= n * sum_sq for any real values (are these squares of the per-user values?)"
            )

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        return _variance(self.n, self.sum, self.sum_sq)

    @classmethod
    def from_values(cls, values: npt.ArrayLike) -> MeanStats:
        """From per-user values (one per user, already aggregated per user)."""
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 1:
            raise StatsInputError("per-user values must be a one-dimensional array")
        return cls(n=int(array.size), sum=float(array.sum()), sum_sq=float(np.dot(array, array)))

    def check_binary(self) -> None:
        """A binary metric's per-user values are 0 or 1: sum = sum_sq and 0 <= sum <= n."""
        if not 0 <= self.sum <= self.n:
            raise StatsInputError(
                f"binary metric: sum {self.sum} must lie between 0 and n {self.n} (users with the event)"
            )
        if not math.isclose(self.sum, self.sum_sq, rel_tol=1e-9, abs_tol=1e-9):
            raise StatsInputError(
                f"binary metric: sum_sq {self.sum_sq} must equal sum {self.sum} (values are 0 or 1)"
            )


@dataclass(frozen=True, slots=True)
class RatioStats:
    """A ratio metric's per-variant sums: numerator m and denominator d per user.

    ``cross`` is the sum over users of m * d, which the delta method needs for their covariance.
    """

    n: int
    num_sum: float
    num_sum_sq: float
    den_sum: float
    den_sum_sq: float
    cross: float

    def __post_init__(self) -> None:
        _check_n(self.n)
        for name in ("num_sum", "num_sum_sq", "den_sum", "den_sum_sq", "cross"):
            _check_finite(name, getattr(self, name))
        # Validates each part on its own (same checks as a mean metric).
        MeanStats(self.n, self.num_sum, self.num_sum_sq)
        MeanStats(self.n, self.den_sum, self.den_sum_sq)
        bound = math.sqrt(self.num_sum_sq * self.den_sum_sq)
        if abs(self.cross) > bound * (1 + _RELATIVE_SLACK) + 1e-12:
            raise StatsInputError(
                f"cross {self.cross} exceeds sqrt(num_sum_sq * den_sum_sq) = {bound} "
                "(Cauchy-Schwarz): is it the sum of per-user numerator * denominator?"
            )

    @property
    def numerator(self) -> MeanStats:
        return MeanStats(self.n, self.num_sum, self.num_sum_sq)

    @property
    def denominator(self) -> MeanStats:
        return MeanStats(self.n, self.den_sum, self.den_sum_sq)

    @property
    def mean(self) -> float:
        """The ratio of sums (= ratio of means), 0 when the denominator sums to 0."""
        return self.num_sum / self.den_sum if self.den_sum else 0.0

    @property
    def covariance(self) -> float:
        if self.n < 2:
            return 0.0
        return (self.cross - self.num_sum * self.den_sum / self.n) / (self.n - 1)

    @property
    def variance_of_mean(self) -> float:
        """Delta-method variance of the ratio estimate (Deng, Knoblich & Lu 2018, eq. 2)."""
        if self.n < 2 or self.den_sum == 0:
            return 0.0
        mu_m = self.num_sum / self.n
        mu_d = self.den_sum / self.n
        var = (
            self.numerator.variance / mu_d**2
            - 2 * self.covariance * mu_m / mu_d**3
            + mu_m**2 * self.denominator.variance / mu_d**4
        )
        return max(0.0, var) / self.n

    @classmethod
    def from_values(cls, numerator: npt.ArrayLike, denominator: npt.ArrayLike) -> RatioStats:
        m = np.asarray(numerator, dtype=np.float64)
        d = np.asarray(denominator, dtype=np.float64)
        if m.ndim != 1 or m.shape != d.shape:
            raise StatsInputError("numerator and denominator need one value per user each")
        return cls(
            n=int(m.size),
            num_sum=float(m.sum()),
            num_sum_sq=float(np.dot(m, m)),
            den_sum=float(d.sum()),
            den_sum_sq=float(np.dot(d, d)),
            cross=float(np.dot(m, d)),
        )


MetricStats = MeanStats | RatioStats


def total(parts: Sequence[MeanStats]) -> MeanStats:
    """Sums add: the statistics of the union of disjoint groups of users."""
    return MeanStats(
        n=sum(p.n for p in parts),
        sum=math.fsum(p.sum for p in parts),
        sum_sq=math.fsum(p.sum_sq for p in parts),
    )
