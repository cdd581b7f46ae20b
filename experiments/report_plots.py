"""The HTML report's figures, drawn with matplotlib and returned as inline SVG text.

Why matplotlib: it is the lighter of the two well-kept choices (plotly would inline ~3.5 MB of
JavaScript into every page; an SVG figure here is 10-40 kB, needs no script to display, prints,
and scales). Figures are built on :class:`matplotlib.figure.Figure` directly, never pyplot, so
nothing global (a GUI backend, an open-figure registry) is touched, and text stays text
(``svg.fonttype: none``) so the page's own font draws it and a browser can search it.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.typing import RcKeyType

from experiments.report import TimelinePoint

CONTROL_COLOUR = "#6e7781"
PALETTE = ("#0969da", "#8250df", "#bf3989", "#1a7f37", "#9a6700")
_RC: dict[RcKeyType, Any] = {
    "svg.fonttype": "none",  # text as <text>, drawn in the page's font
    "font.family": "sans-serif",
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


def _svg(fig: Figure, name: str) -> str:
    """The figure as an ``<svg>`` element (no XML prolog), with ids salted by ``name`` so two
    figures on one page never share a clip-path id; no date, so a page renders reproducibly."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": name}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _colour(variant: str, control: str, order: Sequence[str]) -> str:
    if variant == control:
        return CONTROL_COLOUR
    treatments = [v for v in order if v != control]
    return PALETTE[treatments.index(variant) % len(PALETTE)]


def _day_ticks(ax: Axes, days: Sequence[dt.date], most: int = 10) -> None:
    """One tick per day, labelled sparsely enough that labels never overlap."""
    step = max(1, -(-len(days) // most))
    ax.set_xticks(range(len(days)))
    ax.set_xticklabels([d.strftime("%b %d") if i % step == 0 else "" for i, d in enumerate(days)])


def exposures_per_day(series: Mapping[str, Sequence[tuple[dt.date, int]]], control: str) -> str:
    """Grouped bars: users first exposed each day, one bar per variant."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(10, 2.6))
        ax = fig.add_subplot()
        days = sorted({d for points in series.values() for d, _ in points})
        order = sorted(series, key=lambda v: (v != control, v))
        width = 0.8 / max(1, len(order))
        for i, variant in enumerate(order):
            counts = dict(series[variant])
            xs = [k + (i - (len(order) - 1) / 2) * width for k in range(len(days))]
            ax.bar(xs, [counts.get(d, 0) for d in days], width=width, label=variant,
                   color=_colour(variant, control, order))  # fmt: skip
        _day_ticks(ax, days)
        ax.set_ylabel("new users")
        ax.legend(frameon=False, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=len(order))
        return _svg(fig, "exposures")


def interval_over_time(
    points: Sequence[TimelinePoint],
    *,
    metric: str,
    mde: float | None,
    direction: str,
    level: str,
) -> str:
    """The primary metric's lift per day: the estimate, the fixed-horizon interval (valid only
    at the one planned look) and the always-valid confidence sequence (valid at every look),
    narrowing as users arrive; zero and the planned effect as reference lines."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(10, 3.4))
        ax = fig.add_subplot()
        days = [p.day for p in points]
        xs = list(range(len(points)))
        scale = 100.0 if points and points[0].relative else 1.0

        def band(lows: list[float | None], highs: list[float | None]) -> tuple[list[float], ...]:
            keep = [i for i in xs if lows[i] is not None and highs[i] is not None]
            return (
                [float(i) for i in keep],
                [float(lows[i]) * scale for i in keep],  # type: ignore[arg-type]
                [float(highs[i]) * scale for i in keep],  # type: ignore[arg-type]
            )

        seq = band([p.sequential_ci.low for p in points], [p.sequential_ci.high for p in points])
        fix = band([p.fixed_ci.low for p in points], [p.fixed_ci.high for p in points])
        if len(points) == 1:  # one day: bars, since a band needs two ends
            bars = ((seq, "#0969da", 10, f"always-valid {level} (look any day)"),
                    (fix, "#1f2328", 4, f"fixed-horizon {level} (one planned look)"))  # fmt: skip
            for (x, lo, hi), colour, width, label in bars:
                if x:
                    ax.vlines(x, lo, hi, colors=colour, linewidth=width, alpha=0.45, label=label)
        else:
            ax.fill_between(seq[0], seq[1], seq[2], color="#0969da", alpha=0.18,
                            label=f"always-valid {level} (look any day)")  # fmt: skip
            ax.fill_between(fix[0], fix[1], fix[2], color="#0969da", alpha=0.35,
                            label=f"fixed-horizon {level} (one planned look)")  # fmt: skip
        est = [(x, p.estimate * scale) for x, p in zip(xs, points, strict=True)
               if p.estimate is not None]  # fmt: skip
        if est:
            ax.plot([x for x, _ in est], [y for _, y in est], "o-", color="#1f2328",
                    markersize=3, linewidth=1.2, label="estimate")  # fmt: skip
        ax.axhline(0, color="#b42318", linewidth=1, label="no effect")
        if mde is not None:
            sign = 1 if direction == "increase" else -1
            ax.axhline(sign * mde * scale, color="#1a7f37", linewidth=1, linestyle="--",
                       label="planned effect (MDE)")  # fmt: skip
        _day_ticks(ax, days)
        if len(points) == 1:
            ax.set_xlim(-1, 1)
        unit = "relative lift, %" if scale == 100.0 else "difference"
        ax.set_ylabel(f"{metric}: {unit}")
        ax.legend(frameon=False, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12),
                  ncols=3)  # fmt: skip
        return _svg(fig, "timeline")


def forest(
    rows: Sequence[
        tuple[
            str,
            float | None,
            tuple[float | None, float | None],
            tuple[float | None, float | None],
            float | None,
        ]
    ],
    *,
    relative: bool,
) -> str:
    """One line per metric and treatment: the estimate, the fixed interval (thick) and the
    always-valid one (thin), and a guardrail's worst acceptable change (a red tick).
    Each row: (label, estimate, fixed (low, high), sequential (low, high), limit)."""
    scale = 100.0 if relative else 1.0
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(10, 0.5 * len(rows) + 0.9))
        ax = fig.add_subplot()
        for y, (_, estimate, fixed, seq, limit) in enumerate(reversed(rows)):
            for (lo, hi), width in ((seq, 1.5), (fixed, 5.0)):
                if lo is not None and hi is not None:
                    ax.hlines(y, lo * scale, hi * scale, colors="#0969da", linewidth=width,
                              alpha=0.6)  # fmt: skip
            if estimate is not None:
                ax.plot(estimate * scale, y, "o", color="#1f2328", markersize=4)
            if limit is not None:
                ax.plot(limit * scale, y, "|", color="#b42318", markersize=16, mew=2)
        ax.axvline(0, color="#6e7781", linewidth=1)
        ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)])
        ax.set_xlabel("relative change, %" if relative else "difference")
        ax.grid(axis="y", visible=False)
        return _svg(fig, "forest")
