"""What both renderers of a :class:`~experiments.report.Report` share: words for the verdict,
number formats, and the few series a page draws (new users per day) read off the report.

Pure and small on purpose: the report holds every number, the renderers only choose how to
show it, and this module keeps the terminal and the HTML page saying the same thing in the same
words (a "+5.00%" in one is a "+5.00%" in the other).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from experiments.report import MetricRow, Report, TimelinePoint
from experiments.stats.model import Comparison, Effect

VERDICT_WORDS = {
    "ship": "Ship",
    "do_not_ship": "Do not ship",
    "keep_running": "Keep running",
    "invalid": "Invalid",
}
# One colour per verdict, used by both renderers (rich style names map onto the same meaning).
VERDICT_COLOURS = {
    "ship": "#1a7f37",
    "do_not_ship": "#b42318",
    "keep_running": "#9a6700",
    "invalid": "#6e7781",
}
RICH_STYLES = {
    "ship": "bold white on green",
    "do_not_ship": "bold white on red",
    "keep_running": "bold black on yellow",
    "invalid": "bold white on grey37",
}


class UnknownMetric(ValueError):
    """``--metric NAME`` names no declared metric; the message lists the declared ones."""


@dataclass(frozen=True)
class Header:
    """Who the report is about: the renderers' title (the report itself names no flag)."""

    flag: str
    experiment: str


def headline(report: Report) -> str:
    """``Ship candidate``, ``Keep running until 2026-01-20``, ``Do not ship``, ``Invalid``."""
    d = report.decision
    words = VERDICT_WORDS[d.verdict]
    if d.verdict == "ship" and d.variant:
        return f"{words} {d.variant}"
    if d.verdict == "keep_running" and d.until is not None:
        return f"{words} until {d.until.isoformat()}"
    if d.verdict == "keep_running" and d.days_remaining is not None:
        return f"{words} (about {d.days_remaining:.1f} more days)"
    return words


def only_metric(report: Report, metric: str | None) -> Report:
    """The report with its metric and segment rows narrowed to ``metric`` (the verdict, SRM,
    power and the primary metric's timeline stay whole: they are the experiment's, not a row's)."""
    if metric is None:
        return report
    declared = [m.name for m in report.plan.metrics]
    if metric not in declared:
        raise UnknownMetric(f"metric {metric!r} is not declared (declared: {', '.join(declared)})")
    return report.model_copy(
        update={
            "metrics": [r for r in report.metrics if r.metric == metric],
            "segments": [r for r in report.segments if r.metric == metric],
        }
    )


def shown_effect(comparison: Comparison, relative: bool) -> Effect:
    """The effect a row shows: the relative lift when the plan thinks in relative terms and the
    control mean allows it, else the absolute difference."""
    if relative and comparison.relative.estimate is not None:
        return comparison.relative
    return comparison.absolute


def is_relative(report: Report, comparison: Comparison) -> bool:
    return report.plan.mde_relative and comparison.relative.estimate is not None


def pct(value: float | None, signed: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:+.2f}%" if signed else f"{value * 100:.1f}%"


def num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def p_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def effect_text(effect: Effect, relative: bool) -> str:
    """``+5.00% [+3.49%, +6.51%]`` or ``+0.0123 [-0.002, +0.026]``."""
    fmt = pct if relative else (lambda v: num(v, signed=True))
    return f"{fmt(effect.estimate)} [{fmt(effect.ci.low)}, {fmt(effect.ci.high)}]"


def mean_text(row: MetricRow, side: str) -> str:
    arm = row.fixed.control if side == "control" else row.fixed.treatment
    if arm.mean is None:
        return "n/a"
    return pct(arm.mean, signed=False) if row.type == "binary" else num(arm.mean)


def correction_text(label: str) -> str:
    """The report's correction label, with "none" said in words."""
    return "no correction (the only test in its family)" if label == "none" else label


def level(report: Report) -> str:
    """``95%`` for alpha 0.05."""
    return f"{(1 - report.plan.alpha) * 100:g}%"


def new_users_by_day(report: Report) -> dict[str, list[tuple[dt.date, int]]]:
    """Users first exposed each day, per variant, from the timeline's cumulative counts (the
    primary metric counts every exposed user, with or without an outcome)."""
    cumulative: dict[str, dict[dt.date, int]] = {}
    for point in report.timeline:
        cumulative.setdefault(report.control, {})[point.day] = point.users_control
        cumulative.setdefault(point.treatment, {})[point.day] = point.users_treatment
    out: dict[str, list[tuple[dt.date, int]]] = {}
    for variant, by_day in cumulative.items():
        previous = 0
        series = []
        for day in sorted(by_day):
            series.append((day, by_day[day] - previous))
            previous = by_day[day]
        out[variant] = series
    return out


def timeline_of(report: Report, treatment: str) -> list[TimelinePoint]:
    return sorted((p for p in report.timeline if p.treatment == treatment), key=lambda p: p.day)


def treatments(report: Report) -> list[str]:
    return sorted(v for v in report.users if v != report.control)
