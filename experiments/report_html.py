"""The self-contained HTML report (``flagctl report FLAG --html FILE``): one file, no network.

Written for whoever decides, not whoever computed: the verdict and its reasons first, then
the evidence in the order a product manager asks for it (is the split healthy, how far along is
it, what did the primary metric do and how sure are we, did anything we care about get worse,
does it hold in every segment, what was the plan). CSS is inline, figures are inline SVG
(:mod:`experiments.report_plots`), there is no script and no external resource, so the file
opens from a mail attachment or an air-gapped laptop. Every text from a flag (hypothesis,
variant names, segment values) is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from experiments import report_plots
from experiments.report import MetricRow, Report
from experiments.report_view import (
    VERDICT_COLOURS,
    Header,
    correction_text,
    effect_text,
    headline,
    is_relative,
    level,
    mean_text,
    new_users_by_day,
    num,
    p_value,
    pct,
    shown_effect,
    timeline_of,
    treatments,
)

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
 max-width:1040px;margin:24px auto;padding:0 20px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
.sub{color:#656d76;margin:0 0 16px}
.verdict{border-radius:8px;padding:14px 18px;color:#fff}
.verdict b{font-size:24px;display:block;margin-bottom:6px}.verdict ul{margin:0;padding-left:20px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-top:16px}
.card{border:1px solid #d0d7de;border-radius:8px;padding:10px 14px;min-width:140px;flex:1 1 0}
.card .k{color:#656d76;font-size:13px}.card .v{font-size:20px;font-weight:600}
.bad{color:#b42318}.good{color:#1a7f37}
progress{width:100%;height:10px}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}
th,td{border-bottom:1px solid #d8dee4;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
figure{margin:8px 0}figure svg{width:100%;height:auto}
th.n{text-align:right}details{margin:6px 0}summary{cursor:pointer;color:#0969da}
figcaption,.note{color:#656d76;font-size:13px}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(
    head: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = ()
) -> str:
    cells = "".join(
        f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
        for i, h in enumerate(head)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    thead = f"<thead><tr>{cells}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _card(key: str, value: str, extra: str = "", cls: str = "", raw: bool = False) -> str:
    """A headline number; ``raw``: ``value`` is already HTML (escaped by the caller)."""
    shown = value if raw else _e(value)
    return (f'<div class="card"><div class="k">{_e(key)}</div>'
            f'<div class="v {cls}">{shown}</div>{extra}</div>')  # fmt: skip


def _verdict(report: Report, header: Header) -> str:
    d = report.decision
    reasons = "".join(f"<li>{_e(r)}</li>" for r in d.reasons)
    as_of = report.as_of.isoformat() if report.as_of else "n/a"
    return (
        f"<h1>Experiment report: {_e(header.flag)}</h1>"
        f'<p class="sub">experiment <code>{_e(header.experiment)}</code> · control '
        f"<b>{_e(report.control)}</b> · {report.days_run:.1f} days run · as of {_e(as_of)}</p>"
        f'<section class="verdict" id="verdict" style="background:{VERDICT_COLOURS[d.verdict]}">'
        f"<b>{_e(headline(report))}</b><ul>{reasons}</ul></section>"
    )


def _cards(report: Report) -> str:
    pw, srm = report.power, report.srm
    users = "<br>".join(f"{_e(v)} {n:,}" for v, n in report.users.items())
    progress = ""
    if pw.progress is not None:
        shown = min(1.0, pw.progress)
        progress = f'<progress value="{shown:.4f}" max="1"></progress>'
    days = "n/a" if pw.days_remaining is None else f"{pw.days_remaining:.1f}"
    return '<div class="cards">' + "".join([
        _card("users per variant", users, raw=True),
        _card("mixed-exposure users (excluded)", f"{report.mixed_users:,}",
              cls="bad" if report.decision.verdict == "invalid" and report.mixed_users else ""),
        _card("sample ratio (SRM)", "mismatch" if srm.invalid else "healthy",
              f'<div class="note">p = {_e(p_value(srm.p_value))}</div>',
              cls="bad" if srm.invalid else "good"),
        _card("sample size reached", pct(pw.progress, signed=False), progress),
        _card("days remaining", days),
    ]) + "</div>"  # fmt: skip


def _primary(report: Report) -> str:
    plan = report.plan
    parts = [f"<h2>Primary metric: {_e(plan.primary_metric)} ({_e(plan.direction)} wanted)</h2>"]
    for treatment in treatments(report):
        points = timeline_of(report, treatment)
        if not points:
            continue
        svg = report_plots.interval_over_time(
            points, metric=plan.primary_metric, mde=plan.mde if points[0].relative == plan.mde_relative else None,
            direction=plan.direction, level=level(report),
        )  # fmt: skip
        parts.append(
            f"<figure>{svg}<figcaption>{_e(treatment)} vs {_e(report.control)}, cumulative per "
            "day. The always-valid band may be read every day without inflating false positives; "
            "the fixed-horizon band is exact only at the planned sample size.</figcaption></figure>"
        )
    rows = [r for r in report.metrics if r.role == "primary"]
    parts.append(_metric_table(report, rows))
    return "".join(parts)


def _metric_table(report: Report, rows: Sequence[MetricRow]) -> str:
    head = ["metric", "treatment", f"{report.control} mean", "treatment mean",
            f"lift, fixed {level(report)}", "p", f"lift, always-valid {level(report)}",
            "p (seq.)", "p adjusted", "test (statistic)"]  # fmt: skip
    out = []
    for r in rows:
        rel = is_relative(report, r.fixed)
        stat = "n/a" if r.fixed.statistic is None else f"{r.fixed.statistic:.3f}"
        dof = "" if r.fixed.dof is None else f", dof {r.fixed.dof:.1f}"
        out.append([
            r.metric, r.treatment, mean_text(r, "control"), mean_text(r, "treatment"),
            effect_text(shown_effect(r.fixed, rel), rel), p_value(r.fixed.p_value),
            effect_text(shown_effect(r.sequential, rel), rel), p_value(r.sequential.p_value),
            p_value(r.p_adjusted), f"{r.fixed.test} ({stat}{dof})",
        ])  # fmt: skip
    return _table(head, out, numeric=(2, 3, 4, 5, 6, 7, 8)) + _corrections(
        (f"{r.metric}", r.correction) for r in rows
    )


def _corrections(families: Iterable[tuple[str, str]]) -> str:
    """The note under a table naming each family's correction (the adjusted p-value's meaning)."""
    seen = dict.fromkeys(f"{name}: {correction_text(label)}" for name, label in families)
    return f'<p class="note">p adjusted: {_e("; ".join(seen))}.</p>' if seen else ""


def _guardrails(report: Report) -> str:
    checks = [(t.variant, g) for t in report.decision.treatments for g in t.guardrails]
    if not report.plan.guardrails:
        return '<h2>Guardrails</h2><p class="note">The plan declares no guardrail metric.</p>'
    rows = []
    for variant, g in checks:
        fmt = pct if g.relative else (lambda v: num(v, signed=True))
        rows.append([g.metric, variant, fmt(g.worst_change),
                     f"{fmt(g.estimate)} [{fmt(g.ci.low)}, {fmt(g.ci.high)}]", g.status])  # fmt: skip
    note = ("" if checks else "<p class=\"note\">Not judged: the experiment is invalid or has "
            "no treatment yet.</p>")  # fmt: skip
    return (
        '<h2>Guardrails</h2><p class="note">Safe: the whole interval lies within the worst '
        "acceptable change; breached: entirely beyond it; inconclusive: not yet either.</p>"
        + _table(["metric", "treatment", "worst acceptable", "change [interval]", "status"], rows)
        + note
    )


def _all_metrics(report: Report) -> str:
    if not report.metrics:
        return '<h2>All metrics</h2><p class="note">No metric has data yet.</p>'
    limits = {g.metric: g.worst_change for g in report.plan.guardrails if g.relative}
    relative = report.plan.mde_relative and all(
        r.fixed.relative.estimate is not None for r in report.metrics
    )
    rows = []
    for r in report.metrics:
        fx = r.fixed.relative if relative else r.fixed.absolute
        sq = r.sequential.relative if relative else r.sequential.absolute
        rows.append((f"{r.metric} ({r.role}) · {r.treatment}", fx.estimate,
                     (fx.ci.low, fx.ci.high), (sq.ci.low, sq.ci.high),
                     limits.get(r.metric) if relative else None))  # fmt: skip
    svg = report_plots.forest(rows, relative=relative)
    return (
        "<h2>All metrics</h2>"
        f"<figure>{svg}<figcaption>Thick: fixed-horizon interval; thin: always-valid; red tick: "
        "a guardrail's worst acceptable change.</figcaption></figure>"
        + _metric_table(report, report.metrics)
    )


def _exposures(report: Report) -> str:
    series = new_users_by_day(report)
    head = "<h2>Exposures per day</h2>"
    if not series:
        return head + '<p class="note">No exposure has been recorded yet.</p>'
    svg = report_plots.exposures_per_day(series, report.control)
    days = sorted({d for points in series.values() for d, _ in points})
    variants = sorted(series, key=lambda v: (v != report.control, v))
    rows = [[d.isoformat(), *(dict(series[v]).get(d, 0) for v in variants)] for d in days]
    return (
        head + f"<figure>{svg}<figcaption>Users seen for the first time each day (UTC), per "
        "variant.</figcaption></figure>"
        + "<details><summary>new users per day, as a table</summary>"
        + _table(["day", *variants], rows, numeric=tuple(range(1, len(variants) + 1)))
        + "</details>"
    )


def _srm(report: Report) -> str:
    srm = report.srm
    rows = []
    for ph in srm.phases:
        seen = ", ".join(f"{k} {v:,}" for k, v in ph.observed.items())
        wanted = ", ".join(f"{k} {v:,.0f}" for k, v in ph.expected_users.items())
        chi = "n/a" if ph.chi2 is None else f"{ph.chi2:.3f}"
        rows.append([ph.label, seen, wanted, chi, ph.dof, p_value(ph.p_value),
                     "mismatch" if ph.mismatch else "ok", ph.note or ""])  # fmt: skip
    chi2 = "n/a" if srm.chi2 is None else f"{srm.chi2:.3f}"
    return (
        '<h2>Sample ratio (SRM)</h2><p class="note">Pearson χ² of users against the split in '
        f"force, per constant-split phase. Combined: χ² {chi2}, {srm.dof} dof, p = "
        f"{_e(p_value(srm.p_value))}; below {srm.threshold:g} the experiment is invalid.</p>"
        + _table(
            ["split (phase)", "observed", "expected", "χ²", "dof", "p", "verdict", "note"],
            rows,
            numeric=(3, 4, 5),
        )
    )


def _power(report: Report) -> str:
    pw = report.power
    if pw.required_per_variant is None:
        return f"<h2>Sample size</h2><p>Not computable yet: {_e(pw.note or 'no baseline')}.</p>"
    mde = pct(pw.mde, signed=False) if pw.mde_relative else num(pw.mde)
    days = "n/a" if pw.days_remaining is None else f"{pw.days_remaining:.1f}"
    rows = [[v, f"{n:,}", f"{pw.required_per_variant:,}",
             pct(min(1.0, n / pw.required_per_variant), signed=False)]
            for v, n in pw.users_per_variant.items()]  # fmt: skip
    return (
        f"<h2>Sample size</h2><p>To detect {_e(mde)}{' relative' if pw.mde_relative else ''} "
        f"on {_e(pw.metric)} (baseline {_e(num(pw.baseline))}) at &alpha; {pw.alpha:g} with power "
        f"{pw.power:.0%} ({_e(pw.inference)}): <b>{pw.required_per_variant:,} users per "
        f"variant</b>. Power now: {_e(pct(pw.power_now, signed=False))}; days remaining at the "
        f"observed traffic: {_e(days)}.</p>"
        + _table(["variant", "users", "needed", "progress"], rows, numeric=(1, 2, 3))
    )


def _segments(report: Report) -> str:
    head = "<h2>Segments</h2>"
    if not report.segments:
        return head + '<p class="note">No segment attribute declared, or none recorded.</p>'
    rows = []
    for s in report.segments:
        c = s.comparison
        rel = is_relative(report, c)
        rows.append([s.attribute, s.value, s.metric, s.treatment, f"{c.control.n:,}",
                     f"{c.treatment.n:,}", effect_text(shown_effect(c, rel), rel),
                     p_value(c.p_value), p_value(s.p_adjusted)])  # fmt: skip
    inference = "always-valid" if report.plan.sequential else "fixed-horizon"
    return (
        head + f'<p class="note">{inference} intervals; p-values adjusted within each '
        "metric's segment cells. A segment is a place to look, not a verdict.</p>"
        + _table(
            [
                "attribute",
                "value",
                "metric",
                "treatment",
                f"users {report.control}",
                "users treatment",
                "lift [interval]",
                "p",
                "p adjusted",
            ],
            rows,
            numeric=(4, 5, 6, 7),
        )
    )


def _plan(report: Report) -> str:
    plan = report.plan
    metrics = "; ".join(
        f"{m.name} ({m.type}"
        + (f", {m.aggregation}" if m.aggregation else "")
        + (f", {m.numerator}/{m.denominator}" if m.type == "ratio" else "")
        + ")"
        for m in plan.metrics
    )
    guards = (
        "; ".join(
            f"{g.metric}: worst {pct(g.worst_change) if g.relative else num(g.worst_change, True)}"
            for g in plan.guardrails
        )
        or "none"
    )
    rows = [
        ["hypothesis", plan.hypothesis or "(none written)"],
        ["primary metric", f"{plan.primary_metric} ({plan.direction})"],
        ["metrics", metrics], ["guardrails", guards],
        ["segments", ", ".join(plan.segments) or "none"],
        ["minimum detectable effect",
         f"{pct(plan.mde, signed=False) if plan.mde_relative else num(plan.mde)}"
         f"{' relative' if plan.mde_relative else ' absolute'}"],
        ["\u03b1 / power", f"{plan.alpha:g} / {plan.power:.0%}"],
        ["minimum duration", f"{plan.min_duration_days:g} days"],
        ["inference", f"always-valid confidence sequence (GAVI, tau {plan.sequential_tuning:g})"
         if plan.sequential else "fixed horizon (read once, at the planned sample size)"],
        ["multiple testing", plan.correction],
        ["mixed-exposure users", f"excluded; invalid above {plan.max_mixed_share:.1%}"],
    ]  # fmt: skip
    return "<h2>The plan it was judged against</h2>" + _table(["", ""], rows)


def render_html(report: Report, header: Header) -> str:
    """The whole page as one string (write it with UTF-8)."""
    body = "".join([
        _verdict(report, header), _cards(report), _primary(report), _guardrails(report),
        _exposures(report), _srm(report), _power(report), _all_metrics(report),
        _segments(report), _plan(report),
    ])  # fmt: skip
    title = f"{header.flag}: {headline(report)}"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>{body}"
        '<p class="note">Generated by <code>flagctl report</code> (trafficsplit). Intervals are '
        f"{_e(level(report))}; every number is in <code>flagctl report --json</code>.</p>"
        "</body></html>\n"
    )
