"""Sample ratio mismatch: Pearson's chi-square of observed users against the split in force.

A ramp changes the split, so users are compared with the split *of their phase*: one test per
constant-split phase (each phase's users are disjoint: a user counts in the phase of first
exposure). The phases' statistics add up to one combined test with the summed degrees of
freedom. p < 0.001 in any phase or combined marks the experiment invalid: the assignment or the
exposure logging is broken, and no effect estimate can be trusted (Fabijan et al., "Diagnosing
Sample Ratio Mismatch in Online Controlled Experiments", KDD 2019).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict
from scipy import stats

from experiments.stats.model import StatsInputError

SRM_THRESHOLD = 0.001


class SrmPhase(BaseModel):
    """One constant-split phase: expected shares (any positive weights) and observed users."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str
    expected: Mapping[str, float]
    observed: Mapping[str, int]


class PhaseResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: str
    observed: dict[str, int]
    expected_users: dict[str, float]
    chi2: float | None  # None: users in a 0-share variant (no finite statistic)
    dof: int
    p_value: float
    mismatch: bool
    note: str | None = None


class SrmResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    phases: list[PhaseResult]
    chi2: float | None
    dof: int
    p_value: float
    threshold: float
    invalid: bool


def _phase(phase: SrmPhase, threshold: float) -> PhaseResult:
    names = sorted(set(phase.expected) | set(phase.observed))
    for name in names:
        weight = phase.expected.get(name, 0.0)
        count = phase.observed.get(name, 0)
        if not math.isfinite(weight) or weight < 0:
            raise StatsInputError(f"SRM phase {phase.label!r}: share of {name!r} is {weight}")
        if isinstance(count, bool) or count < 0:
            raise StatsInputError(f"SRM phase {phase.label!r}: {name!r} has {count} users")
    weights = {n: phase.expected.get(n, 0.0) for n in names}
    observed = {n: int(phase.observed.get(n, 0)) for n in names}
    total_weight = sum(weights.values())
    total = sum(observed.values())
    if total_weight <= 0:
        raise StatsInputError(f"SRM phase {phase.label!r}: expected shares are all zero")
    expected = {n: weights[n] / total_weight * total for n in names}
    stray = [n for n in names if weights[n] == 0 and observed[n] > 0]
    if stray:
        # Users in a variant the split never serves: no chi-square needed to call that broken.
        return PhaseResult(
            label=phase.label, observed=observed, expected_users=expected, chi2=None,
            dof=max(1, len(names) - 1), p_value=0.0, mismatch=True,
            note=f"users in variants with a 0 share: {', '.join(stray)}",
        )  # fmt: skip
    live = [n for n in names if weights[n] > 0]
    if total == 0 or len(live) < 2:
        return PhaseResult(
            label=phase.label, observed=observed, expected_users=expected, chi2=0.0,
            dof=0, p_value=1.0, mismatch=False, note="nothing to compare in this phase",
        )  # fmt: skip
    result = stats.chisquare([observed[n] for n in live], [expected[n] for n in live])
    p = float(result.pvalue)
    return PhaseResult(
        label=phase.label,
        observed=observed,
        expected_users=expected,
        chi2=float(result.statistic),
        dof=len(live) - 1,
        p_value=p,
        mismatch=p < threshold,
    )


def sample_ratio_mismatch(
    phases: Sequence[SrmPhase], threshold: float = SRM_THRESHOLD
) -> SrmResult:
    """Chi-square per phase and combined; ``invalid`` when any p-value is below ``threshold``."""
    results = [_phase(p, threshold) for p in phases]
    stray = any(r.chi2 is None for r in results)
    chi2 = None if stray else math.fsum(r.chi2 or 0.0 for r in results)
    dof = sum(r.dof for r in results)
    if chi2 is None:
        p_combined = 0.0
    elif dof == 0:
        p_combined = 1.0
    else:
        p_combined = float(stats.chi2.sf(chi2, dof))
    invalid = p_combined < threshold or any(r.mismatch for r in results)
    return SrmResult(
        phases=results,
        chi2=chi2,
        dof=dof,
        p_value=p_combined,
        threshold=threshold,
        invalid=invalid,
    )
