"""Guardrail verdicts: is the candidate worse than the control? (pure: windows in, verdict out)

Two windows, as SRE burn-rate alerts do: the flag's long window (``window_seconds``, a slow leak
over minutes) and a short fast-burn window (``short_window_seconds``, a hard failure in seconds,
judged against a higher threshold and a lower request floor). Rules, each off when null:

* ``short_max_error_rate``: candidate failures / attempts over the short window (once it has
  ``short_min_requests`` attempts there);
* ``max_error_rate``: the same over the long window (once it has ``min_requests``);
* ``relative_error_alpha``: the candidate's error rate is above the control's by a one-sided
  Fisher exact test at that significance (exact, so 1 error in 30 requests does not trip it, where
  a normal-approximation z-test would);
* ``max_p99_latency_ratio``: candidate p99 > ratio x control p99 over the same (long) window,
  once both have 100 samples (a p99 of fewer is the maximum: one slow request would decide), and
  by more than ``p99_min_increase_ms`` (2 ms): below that a ratio is scheduler noise.

Only ``exposed`` traffic is compared: both versions' users were put there by the same random
split, so their difference is the version's doing. Allow-listed (targeted) users are self-chosen,
and pinned, out-of-coverage and shadow traffic are not the served experiment. At the 100 % step
the control gets no traffic: the caller passes the :class:`Baseline` recorded at the step before.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import fisher_exact

from flags.schema import Guardrails, Target
from signals.model import Group, VersionStats, Window

COMPARED_GROUPS = (Group.EXPOSED,)
P99 = 0.99
# Below 100 samples a p99 is the maximum: one slow request (a GC pause) would decide.
P99_MIN_SAMPLES = 100


class Status(enum.StrEnum):
    HOLDING = "holding"  # enough requests, no rule fired
    BREACHED = "breached"  # at least one rule fired: roll back
    NOT_ENOUGH_DATA = "not_enough_data"  # below min_requests and nothing fired yet


class Rule(enum.StrEnum):
    SHORT_ERROR_RATE = "short_max_error_rate"
    ERROR_RATE = "max_error_rate"
    RELATIVE_ERROR = "relative_error_alpha"
    P99_RATIO = "max_p99_latency_ratio"


@dataclass(frozen=True, slots=True)
class Evidence:
    """One version's numbers over one window (what the audit record shows)."""

    attempts: int
    failures: int
    error_rate: float | None
    p99_s: float | None

    @classmethod
    def of(cls, stats: VersionStats) -> Evidence:
        return cls(stats.attempts, stats.failures, stats.error_rate, stats.latency_quantile(P99))


@dataclass(frozen=True, slots=True)
class Baseline:
    """The control's long-window numbers recorded when the last partial step ended."""

    attempts: int
    failures: int
    p99_s: float | None

    @property
    def evidence(self) -> Evidence:
        rate = self.failures / self.attempts if self.attempts else None
        return Evidence(self.attempts, self.failures, rate, self.p99_s)


@dataclass(frozen=True, slots=True)
class Fired:
    rule: Rule
    window: str  # "short" or "long"
    observed: float
    threshold: float
    message: str


@dataclass(frozen=True, slots=True)
class Verdict:
    status: Status
    fired: tuple[Fired, ...]
    candidate_long: Evidence
    control_long: Evidence
    candidate_short: Evidence
    control_short: Evidence
    control_is_baseline: bool = False

    @property
    def summary(self) -> str:
        if not self.fired:
            return str(self.status)
        return "; ".join(f.message for f in self.fired)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        data["fired"] = [{**asdict(f), "rule": str(f.rule)} for f in self.fired]
        return data


def judge(
    guardrails: Guardrails,
    *,
    flag: str,
    candidate: Target,
    control: Target,
    long: Window,
    short: Window,
    baseline: Baseline | None = None,
) -> Verdict:
    """The verdict for ``candidate`` against ``control`` (or ``baseline``) over both windows."""
    cand_l = _stats(long, flag, candidate)
    cand_s = _stats(short, flag, candidate)
    ctrl_l = baseline.evidence if baseline else Evidence.of(_stats(long, flag, control))
    ctrl_s = Evidence.of(_stats(short, flag, control))
    fired: list[Fired] = []
    g = guardrails
    if g.short_max_error_rate is not None and cand_s.attempts >= g.short_min_requests:
        rate = cand_s.failures / cand_s.attempts
        if rate > g.short_max_error_rate:
            fired.append(
                Fired(
                    Rule.SHORT_ERROR_RATE,
                    "short",
                    rate,
                    g.short_max_error_rate,
                    f"error rate {rate:.1%} over the last {g.short_window_seconds:g} s "
                    f"({cand_s.failures}/{cand_s.attempts}) > {g.short_max_error_rate:.1%}",
                )
            )
    enough = cand_l.attempts >= max(g.min_requests, 1)
    if enough:
        fired += _long_rules(g, Evidence.of(cand_l), ctrl_l)
    status = Status.HOLDING if enough else Status.NOT_ENOUGH_DATA
    if fired:
        status = Status.BREACHED
    return Verdict(
        status,
        tuple(fired),
        Evidence.of(cand_l),
        ctrl_l,
        Evidence.of(cand_s),
        ctrl_s,
        control_is_baseline=baseline is not None,
    )


def _stats(window: Window, flag: str, target: Target) -> VersionStats:
    return window.version(flag, target.model, target.version, COMPARED_GROUPS)


def _long_rules(g: Guardrails, cand: Evidence, ctrl: Evidence) -> list[Fired]:
    fired: list[Fired] = []
    rate = cand.failures / cand.attempts
    if g.max_error_rate is not None and rate > g.max_error_rate:
        fired.append(
            Fired(
                Rule.ERROR_RATE,
                "long",
                rate,
                g.max_error_rate,
                f"error rate {rate:.2%} over {g.window_seconds:g} s "
                f"({cand.failures}/{cand.attempts}) > {g.max_error_rate:.2%}",
            )
        )
    if g.relative_error_alpha is not None and ctrl.attempts:
        p = relative_error_p_value(cand.failures, cand.attempts, ctrl.failures, ctrl.attempts)
        if p < g.relative_error_alpha:
            fired.append(
                Fired(
                    Rule.RELATIVE_ERROR,
                    "long",
                    p,
                    g.relative_error_alpha,
                    f"error rate {rate:.2%} ({cand.failures}/{cand.attempts}) above the "
                    f"control's {ctrl.failures}/{ctrl.attempts} (one-sided Fisher p = {p:.2g} "
                    f"< {g.relative_error_alpha:g})",
                )
            )
    ratio = g.max_p99_latency_ratio
    sampled = min(cand.attempts, ctrl.attempts) >= P99_MIN_SAMPLES
    if ratio is not None and sampled and cand.p99_s is not None and ctrl.p99_s:
        observed = cand.p99_s / ctrl.p99_s
        increase_ms = (cand.p99_s - ctrl.p99_s) * 1e3
        if observed > ratio and increase_ms > g.p99_min_increase_ms:
            fired.append(
                Fired(
                    Rule.P99_RATIO,
                    "long",
                    observed,
                    ratio,
                    f"p99 {cand.p99_s * 1e3:.1f} ms is {observed:.2f}x the control's "
                    f"{ctrl.p99_s * 1e3:.1f} ms > {ratio:g}x",
                )
            )
    return fired


def relative_error_p_value(
    cand_failures: int, cand_attempts: int, ctrl_failures: int, ctrl_attempts: int
) -> float:
    """One-sided p-value of "the candidate fails more often than the control" (Fisher exact).

    Exact (hypergeometric), so it stays honest at the small counts of an early ramp step,
    where the two-proportion z-test's normal approximation calls 1 failure in 30 against 0 in 570
    significant (z = 4.4). scipy's implementation; counts are clamped to be consistent.
    """
    cf = min(max(cand_failures, 0), cand_attempts)
    kf = min(max(ctrl_failures, 0), ctrl_attempts)
    table = np.array([[cf, cand_attempts - cf], [kf, ctrl_attempts - kf]], dtype=np.int64)
    _, p = fisher_exact(table, alternative="greater")
    return float(p)


def baseline_of(verdict: Verdict) -> Baseline:
    """The control numbers to keep for the 100 % step, from the last verdict of a partial step."""
    ctrl = verdict.control_long
    return Baseline(ctrl.attempts, ctrl.failures, ctrl.p99_s)


def evidence_text(evidence: Mapping[str, Any]) -> str:
    """``attempts/failures/p99`` of an evidence dict, for one-line messages."""
    p99 = evidence.get("p99_s")
    p99_text = "n/a" if p99 is None else f"{float(p99) * 1e3:.1f} ms"
    return f"{evidence.get('failures')}/{evidence.get('attempts')} failed, p99 {p99_text}"
