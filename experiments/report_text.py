"""The terminal summary of a :class:`~experiments.report.Report` (``flagctl report FLAG``), with rich.

The verdict and its reasons come first, because that is what the reader came for; then the
health of the split (users, mixed users, SRM), sample-size progress, each metric with its
fixed-horizon and always-valid interval and its raw and adjusted p-value (correction named),
and the per-segment rows. Formatting only: every number is the report's.
"""

from __future__ import annotations

from collections.abc import Iterator

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from experiments.report import Report
from experiments.report_view import (
    RICH_STYLES,
    Header,
    correction_text,
    effect_text,
    headline,
    is_relative,
    level,
    mean_text,
    num,
    p_value,
    pct,
    shown_effect,
)


def _verdict(report: Report, header: Header) -> Iterator[RenderableType]:
    d = report.decision
    yield Text(f"{header.flag}: experiment {header.experiment}", style="bold")
    yield Text(f" {headline(report).upper()} ", style=RICH_STYLES[d.verdict])
    for reason in d.reasons:
        yield Text(f"  • {reason}")


def _health(report: Report) -> Iterator[RenderableType]:
    users = ", ".join(f"{v} {n:,}" for v, n in report.users.items())
    as_of = report.as_of.isoformat() if report.as_of else "n/a"
    yield Text(
        f"Users: {users}; {report.mixed_users:,} mixed-exposure users excluded. "
        f"{report.days_run:.1f} days run, as of {as_of}."
    )
    srm = report.srm
    state = "MISMATCH (invalid)" if srm.invalid else "ok"
    chi2 = "n/a" if srm.chi2 is None else f"{srm.chi2:.3f}"
    yield Text(
        f"Sample ratio: {state}: χ² {chi2}, {srm.dof} dof, p = {p_value(srm.p_value)} "
        f"(invalid below {srm.threshold:g})",
        style="red" if srm.invalid else "",
    )
    for phase in srm.phases:
        seen = ", ".join(f"{k} {v:,}" for k, v in phase.observed.items())
        wanted = ", ".join(f"{k} {v:,.0f}" for k, v in phase.expected_users.items())
        chi = "n/a" if phase.chi2 is None else f"{phase.chi2:.3f}"
        note = f" ({phase.note})" if phase.note else ""
        yield Text(
            f"  phase {phase.label}: observed {seen}; expected {wanted}; χ² {chi}, "
            f"p = {p_value(phase.p_value)}{note}"
        )
    pw = report.power
    if pw.required_per_variant is None:
        yield Text(f"Sample size: not computable yet ({pw.note or 'no baseline'}).")
    else:
        mde = pct(pw.mde, signed=False) if pw.mde_relative else num(pw.mde)
        days = "n/a" if pw.days_remaining is None else f"{pw.days_remaining:.1f}"
        yield Text(
            f"Sample size ({pw.inference}): {pw.required_per_variant:,} users per variant to "
            f"detect {mde}{' relative' if pw.mde_relative else ''} on {pw.metric} at alpha "
            f"{pw.alpha:g}, power {pw.power:.0%}; progress {pct(pw.progress, signed=False)}, "
            f"power now {pct(pw.power_now, signed=False)}, days remaining {days}."
        )


def _metrics(report: Report) -> Iterator[RenderableType]:
    """Each metric and treatment as a small block: fixed and always-valid lines side by side."""
    yield Text(f"Metrics ({level(report)} intervals, treatment vs {report.control}):", style="bold")
    if not report.metrics:
        yield Text("  no metric has data yet")
    chosen = "always-valid" if report.plan.sequential else "fixed"
    for row in report.metrics:
        rel = is_relative(report, row.fixed)
        yield Text(
            f"  {row.metric} ({row.role}), {row.treatment}: {report.control} "
            f"{mean_text(row, 'control')} (n {row.fixed.control.n:,}) → {row.treatment} "
            f"{mean_text(row, 'treatment')} (n {row.fixed.treatment.n:,})",
            style="bold" if row.role == "primary" else "",
        )
        for name, c in (("fixed", row.fixed), ("always-valid", row.sequential)):
            stat = "" if c.statistic is None else f", statistic {c.statistic:.3f}"
            dof = "" if c.dof is None else f", dof {c.dof:.1f}"
            note = f" ({c.note})" if c.note else ""
            yield Text(
                f"    {name:>12}: {effect_text(shown_effect(c, rel), rel)}  p = "
                f"{p_value(c.p_value)}  [{c.test}{stat}{dof}]{note}"
            )
        yield Text(
            f"    {'adjusted':>12}: p = {p_value(row.p_adjusted)} ({chosen}; {correction_text(row.correction)})"
        )


def _guardrails(report: Report) -> Table | None:
    checks = [(t.variant, g) for t in report.decision.treatments for g in t.guardrails]
    if not checks:
        return None
    table = Table(
        title="Guardrails (the plan's inference)", box=box.SIMPLE_HEAD, title_justify="left"
    )
    for name in ("metric", "treatment", "worst acceptable", "change [interval]", "status"):
        table.add_column(name)
    for variant, g in checks:
        fmt = pct if g.relative else (lambda v: num(v, signed=True))
        table.add_row(
            g.metric, variant, fmt(g.worst_change),
            f"{fmt(g.estimate)} [{fmt(g.ci.low)}, {fmt(g.ci.high)}]", g.status,
        )  # fmt: skip
    return table


def _segments(report: Report) -> Iterator[RenderableType]:
    if not report.segments:
        return
    inference = "always-valid" if report.plan.sequential else "fixed-horizon"
    table = Table(
        title=f"Segments ({inference} intervals)", box=box.SIMPLE_HEAD, title_justify="left"
    )
    for name in ("segment", "metric", "treatment", "users c/t", "lift [interval]", "p", "p adj."):
        table.add_column(name, justify="right" if name.startswith(("p", "users")) else "left")
    for row in report.segments:
        c = row.comparison
        rel = is_relative(report, c)
        table.add_row(
            f"{row.attribute}={row.value}", row.metric, row.treatment,
            f"{c.control.n:,}/{c.treatment.n:,}", effect_text(shown_effect(c, rel), rel),
            p_value(c.p_value), p_value(row.p_adjusted),
        )  # fmt: skip
    yield table
    families = dict.fromkeys(f"{r.metric}: {r.correction}" for r in report.segments)
    yield Text("  p adj.: " + "; ".join(families), style="dim")


def _plan(report: Report) -> Text:
    plan = report.plan
    mde = pct(plan.mde, signed=False) if plan.mde_relative else num(plan.mde)
    inference = (
        f"always-valid confidence sequence (tau {plan.sequential_tuning:g})"
        if plan.sequential
        else "fixed horizon"
    )
    lines = [
        f"Plan: {plan.hypothesis or '(no hypothesis written)'}",
        f"  primary {plan.primary_metric} ({plan.direction}); MDE {mde}"
        f"{' relative' if plan.mde_relative else ''}; alpha {plan.alpha:g}; power {plan.power:.0%}; "
        f"minimum {plan.min_duration_days:g} days; {inference}; correction {plan.correction}; "
        f"mixed users tolerated up to {plan.max_mixed_share:.1%}.",
    ]
    return Text("\n".join(lines), style="dim")


def render(report: Report, header: Header) -> Group:
    """The whole summary as one rich renderable (print it with any Console)."""
    parts: list[RenderableType] = [*_verdict(report, header), *_health(report), *_metrics(report)]
    guardrails = _guardrails(report)
    if guardrails is not None:
        parts.append(guardrails)
    parts += [*_segments(report), _plan(report)]
    return Group(*parts)


def print_report(report: Report, header: Header, console: Console) -> None:
    console.print(render(report, header))
