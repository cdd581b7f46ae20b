"""The decision engine: from the plan and the evidence to ship / do not ship / keep running / invalid.

Pure: the caller passes every number (the comparisons chosen by the plan's inference, SRM, the
mixed-exposure count, days run, today's date); nothing is read here. The rollout controller
uses the verdict as the gate for the final ramp step. Rules, in order (docs/experiments.md):

1. invalid: SRM (any phase p < 0.001) or more mixed-exposure users than ``max_mixed_share``.
2. per treatment: do not ship when the primary metric moved significantly the wrong way or a
   guardrail's interval lies entirely beyond its worst acceptable change (harm stops early);
   keep running before ``min_duration_days`` (one business cycle) or, with a fixed-horizon
   test, before the planned sample size; ship when the primary improved significantly and
   every guardrail's interval is within its limit; do not ship when the planned sample size
   is reached without a significant improvement; keep running otherwise.
3. overall: ship the best treatment that may ship; else keep running while any treatment may;
   else do not ship.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

from experiments.plan import ExperimentPlan, Guardrail
from experiments.stats.corrections import adjust
from experiments.stats.model import Comparison, Interval
from experiments.stats.power import days_remaining
from experiments.stats.srm import SrmResult

Verdict = Literal["ship", "do_not_ship", "keep_running", "invalid"]
GuardStatus = Literal["safe", "breached", "inconclusive", "unknown"]


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Evidence(_Value):
    """What the decision reads. ``results``: treatment -> metric -> comparison vs control,
    made with the plan's inference (confidence sequence when ``plan.sequential``)."""

    control: str
    users: dict[str, int]
    results: dict[str, dict[str, Comparison]]
    srm: SrmResult
    mixed_users: int = 0
    days_run: float
    required_per_variant: int | None = None
    as_of: dt.date | None = None


class GuardrailCheck(_Value):
    metric: str
    worst_change: float
    relative: bool
    status: GuardStatus
    estimate: float | None
    ci: Interval


class TreatmentVerdict(_Value):
    variant: str
    verdict: Verdict
    reasons: list[str]
    primary: Comparison | None
    primary_p_adjusted: float | None
    guardrails: list[GuardrailCheck]


class Decision(_Value):
    verdict: Verdict
    variant: str | None  # the treatment to ship, when the verdict is ship
    reasons: list[str]
    until: dt.date | None = None
    days_remaining: float | None = None
    numbers: dict[str, float | int | str | None]
    treatments: list[TreatmentVerdict]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.2f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4g}"


def _p(value: float | None) -> str:
    return "n/a" if value is None else (f"{value:.2g}" if value < 0.001 else f"{value:.3f}")


def _effect_words(c: Comparison, relative: bool) -> str:
    e = c.relative if relative and c.relative.estimate is not None else c.absolute
    fmt = _pct if e is c.relative else _num
    return f"{fmt(e.estimate)} ({(1 - c.alpha) * 100:g}% CI {fmt(e.ci.low)} to {fmt(e.ci.high)})"


def check_guardrail(guard: Guardrail, comparison: Comparison | None) -> GuardrailCheck:
    """Safe: the interval lies within the worst change; breached: entirely beyond it."""
    effect = None
    if comparison is not None:
        effect = comparison.relative if guard.relative else comparison.absolute
    unknown = Interval(low=None, high=None)
    if effect is None or effect.ci.low is None or effect.ci.high is None:
        return GuardrailCheck(
            metric=guard.metric, worst_change=guard.worst_change, relative=guard.relative,
            status="unknown", estimate=None if effect is None else effect.estimate,
            ci=unknown if effect is None else effect.ci,
        )  # fmt: skip
    low, high, worst = effect.ci.low, effect.ci.high, guard.worst_change
    status: GuardStatus
    if worst < 0:  # a decrease is harm
        status = "breached" if high < worst else "safe" if low > worst else "inconclusive"
    else:  # an increase is harm
        status = "breached" if low > worst else "safe" if high < worst else "inconclusive"
    return GuardrailCheck(
        metric=guard.metric, worst_change=worst, relative=guard.relative, status=status,
        estimate=effect.estimate, ci=effect.ci,
    )  # fmt: skip


def _invalid_reasons(plan: ExperimentPlan, ev: Evidence) -> list[str]:
    reasons: list[str] = []
    for phase in ev.srm.phases:
        if phase.mismatch:
            seen = ", ".join(f"{k} {v}" for k, v in phase.observed.items())
            wanted = ", ".join(f"{k} {v:.0f}" for k, v in phase.expected_users.items())
            reasons.append(
                f"Sample ratio mismatch in phase {phase.label!r}: {seen} users where {wanted} "
                f"were expected (p = {_p(phase.p_value)} < {ev.srm.threshold:g}). "
                + (phase.note + ". " if phase.note else "")
                + "Assignment or exposure logging is broken: fix it before reading any result."
            )
    if ev.srm.invalid and not reasons:
        reasons.append(
            f"Sample ratio mismatch over all phases (p = {_p(ev.srm.p_value)} < "
            f"{ev.srm.threshold:g}): fix assignment or exposure logging first."
        )
    total = sum(ev.users.values()) + ev.mixed_users
    share = ev.mixed_users / total if total else 0.0
    if share > plan.max_mixed_share:
        reasons.append(
            f"{ev.mixed_users} users ({share:.1%}) saw more than one variant, above the plan's "
            f"limit of {plan.max_mixed_share:.1%}: a ramp moved users back or a rollback "
            "reshuffled them, so the variants no longer compare like with like."
        )
    return reasons


def _judge(
    plan: ExperimentPlan, ev: Evidence, variant: str, p_adjusted: float | None
) -> TreatmentVerdict:
    results = ev.results.get(variant, {})
    primary = results.get(plan.primary_metric)
    guards = [check_guardrail(g, results.get(g.metric)) for g in plan.guardrails]
    reasons: list[str] = []
    sign = 1 if plan.direction == "increase" else -1
    est = None if primary is None else primary.absolute.estimate
    significant = p_adjusted is not None and p_adjusted < plan.alpha
    good = significant and est is not None and sign * est > 0
    harm = significant and est is not None and sign * est < 0
    n = min(ev.users.get(variant, 0), ev.users.get(ev.control, 0))
    reached = ev.required_per_variant is not None and n >= ev.required_per_variant
    where = f"{variant} vs {ev.control} on {plan.primary_metric}"
    if primary is not None and est is not None:
        reasons.append(
            f"{where}: {_effect_words(primary, plan.mde_relative)}, p = {_p(p_adjusted)} "
            f"({primary.test}; the plan wants an {plan.direction})."
        )
    else:
        note = primary.note if primary is not None and primary.note else "no data yet"
        reasons.append(f"{where}: not estimable yet ({note}).")
    breached = [g for g in guards if g.status == "breached"]
    pending = [g for g in guards if g.status in ("inconclusive", "unknown")]
    for g in breached:
        limit = _pct(g.worst_change) if g.relative else _num(g.worst_change)
        shown = (_pct if g.relative else _num)(g.estimate)
        reasons.append(
            f"Guardrail {g.metric} breached: change {shown}, its whole interval lies beyond "
            f"the worst acceptable {limit}."
        )

    def verdict(v: Verdict, *extra: str) -> TreatmentVerdict:
        return TreatmentVerdict(
            variant=variant, verdict=v, reasons=reasons + list(extra), primary=primary,
            primary_p_adjusted=p_adjusted, guardrails=guards,
        )  # fmt: skip

    if harm:
        return verdict("do_not_ship", f"{variant} made {plan.primary_metric} significantly worse.")
    if breached:
        return verdict("do_not_ship")
    if ev.days_run < plan.min_duration_days:
        return verdict(
            "keep_running",
            f"Ran {ev.days_run:g} of the planned minimum {plan.min_duration_days:g} days "
            "(a full business cycle before any ship decision).",
        )
    if not plan.sequential and not reached:
        return verdict(
            "keep_running",
            f"Fixed-horizon test: read it at the planned {ev.required_per_variant} users per "
            f"variant, not before (now {n}).",
        )
    if good and not pending:
        return verdict("ship", f"{variant} improved {plan.primary_metric}; every guardrail holds.")
    if good:
        names = ", ".join(g.metric for g in pending)
        return verdict(
            "keep_running", f"Primary metric improved, but guardrails not yet shown safe: {names}."
        )
    if reached:
        return verdict(
            "do_not_ship",
            f"No significant change at the planned sample size ({ev.required_per_variant} users "
            f"per variant): an effect of the planned size ({plan.mde:g}"
            f"{' relative' if plan.mde_relative else ''}) would most likely have shown.",
        )
    return verdict("keep_running", "No significant difference yet.")


def decide(plan: ExperimentPlan, evidence: Evidence) -> Decision:
    """The verdict, its reasons in plain words, and the numbers behind them."""
    ev = evidence
    treatments = sorted(ev.results)
    numbers: dict[str, float | int | str | None] = {
        "srm_p_value": ev.srm.p_value,
        "mixed_users": ev.mixed_users,
        "days_run": ev.days_run,
        "min_duration_days": plan.min_duration_days,
        "required_per_variant": ev.required_per_variant,
        "alpha": plan.alpha,
        "inference": "confidence sequence" if plan.sequential else "fixed horizon",
        "correction": plan.correction if len(treatments) > 1 else "none",
    }
    for name, count in sorted(ev.users.items()):
        numbers[f"users.{name}"] = count
    invalid = _invalid_reasons(plan, ev)
    if invalid:
        return Decision(
            verdict="invalid", variant=None, reasons=invalid, numbers=numbers, treatments=[]
        )
    primaries = [ev.results[t].get(plan.primary_metric) for t in treatments]
    raw = [None if c is None else c.p_value for c in primaries]
    # Several treatments against one control: the primary family is corrected.
    adjusted = adjust(raw, plan.correction, plan.alpha) if len(treatments) > 1 else raw
    verdicts = [_judge(plan, ev, t, p) for t, p in zip(treatments, adjusted, strict=True)]
    for v in verdicts:
        est = v.primary.absolute.estimate if v.primary else None
        numbers[f"{v.variant}.primary_estimate"] = est
        numbers[f"{v.variant}.primary_p"] = v.primary_p_adjusted
    sign = 1 if plan.direction == "increase" else -1
    ships = [v for v in verdicts if v.verdict == "ship"]
    if ships:
        best = max(ships, key=lambda v: sign * _estimate(v))
        return Decision(
            verdict="ship", variant=best.variant, reasons=best.reasons, numbers=numbers,
            treatments=verdicts,
        )  # fmt: skip
    reasons = [r for v in verdicts for r in v.reasons]
    if any(v.verdict == "keep_running" for v in verdicts):
        wait = _days_to_wait(plan, ev)
        until = None
        if wait is not None and ev.as_of is not None:
            until = ev.as_of + dt.timedelta(days=math.ceil(wait))
        if wait is None:
            reasons.append("No traffic rate yet to say when the planned sample size is reached.")
        else:
            when = f" (until {until.isoformat()})" if until else ""
            reasons.append(f"Keep running about {math.ceil(wait)} more days{when}.")
        numbers["days_remaining"] = wait
        return Decision(
            verdict="keep_running", variant=None, reasons=reasons, until=until,
            days_remaining=wait, numbers=numbers, treatments=verdicts,
        )  # fmt: skip
    return Decision(
        verdict="do_not_ship", variant=None, reasons=reasons, numbers=numbers, treatments=verdicts
    )


def _estimate(v: TreatmentVerdict) -> float:
    return (v.primary.absolute.estimate or 0.0) if v.primary is not None else 0.0


def _days_to_wait(plan: ExperimentPlan, ev: Evidence) -> float | None:
    """Days until both the minimum duration and the planned sample size are reached."""
    minimum = max(0.0, plan.min_duration_days - ev.days_run)
    if ev.required_per_variant is None:
        return minimum
    counts = [ev.users.get(ev.control, 0)] + [ev.users.get(t, 0) for t in ev.results]
    remaining = days_remaining(ev.required_per_variant, counts, ev.days_run)
    return None if remaining is None else max(minimum, remaining)
