"""Part experiments-stats: report time for 1 million users per variant x 2 variants x 3 metrics.

Rows, alternated within each round: trafficsplit from per-user arrays (sums in numpy, then the
report), trafficsplit from sufficient statistics (the report alone: what the SQL hands over),
GrowthBook's gbstats and Spotify's spotify-confidence on the same aggregates, each in its own
virtualenv (``make gbstats-venv confidence-venv``) and timed inside its process, so interpreter
start-up is not counted. Equal results are checked where the methods coincide: Welch's interval
and the GAVI sequence with gbstats, the absolute difference's z interval with spotify-confidence
(which tests means with a normal reference; at a million users t and z agree to ~1e-7).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from bench.common import ROOT
from bench.report import Metric, PartReport
from experiments.plan import ExperimentPlan
from experiments.report import DailySlice, ExperimentData, Report, build_report
from experiments.report_html import render_html
from experiments.report_text import render
from experiments.report_view import Header
from experiments.stats import MeanStats, RatioStats
from experiments.stats.srm import SrmPhase

GBSTATS = ROOT / ".venv-gbstats" / "bin" / "python"
CONFIDENCE = ROOT / ".venv-confidence" / "bin" / "python"
GB_SCRIPT = ROOT / "tests" / "reference" / "gbstats_reference.py"
SC_SCRIPT = ROOT / "tests" / "reference" / "confidence_reference.py"
FROM_ARRAYS = "trafficsplit (per-user arrays)"
FROM_STATS = "trafficsplit (sufficient stats)"
GB = "gbstats 0.8.0 (same aggregates)"
SC = "spotify-confidence 4.1.0 (same aggregates)"
RENDER_TEXT = "render: terminal summary (rich)"
RENDER_HTML = "render: HTML page (3 matplotlib SVGs)"
DAYS = 14

PLAN = ExperimentPlan.model_validate(
    {
        "metrics": [
            {"name": "correct", "type": "binary"},
            {"name": "latency_ms", "type": "continuous", "aggregation": "mean"},
            {"name": "downloads", "type": "continuous", "aggregation": "count"},
            {"name": "generations", "type": "continuous", "aggregation": "count"},
            {"name": "dl_per_gen", "type": "ratio", "numerator": "downloads", "denominator": "generations"},
        ],
        "primary_metric": "correct",
        "guardrails": [{"metric": "latency_ms", "worst_change": 0.05}],
        "sequential_tuning": 2_000_000,
    }
)  # fmt: skip


def make_users(users: int, seed: int = 1) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for variant, (p, lat, rate) in {"v1": (0.80, 50.0, 0.30), "v2": (0.805, 50.5, 0.31)}.items():
        gens = rng.poisson(3.0, users) + 1
        out[variant] = {
            "correct": (rng.random(users) < p).astype(np.float64),
            "latency_ms": rng.lognormal(np.log(lat), 0.4, users),
            "generations": gens.astype(np.float64),
            "downloads": rng.binomial(gens, rate).astype(np.float64),
        }
    return out


def stats_from_arrays(arrays: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {
        variant: {
            "correct": MeanStats.from_values(a["correct"]),
            "latency_ms": MeanStats.from_values(a["latency_ms"]),
            "dl_per_gen": RatioStats.from_values(a["downloads"], a["generations"]),
        }
        for variant, a in arrays.items()
    }


def report(stats: dict[str, dict[str, Any]]) -> Report:
    users = {v: s["correct"].n for v, s in stats.items()}
    data = ExperimentData(
        control="v1", variants=stats, users=users, days_run=14, as_of=dt.date(2025, 1, 1),
        phases=[SrmPhase(label="50/50", expected={"v1": 1, "v2": 1}, observed=users)],
    )  # fmt: skip
    return build_report(PLAN, data)


def report_with_timeline(arrays: dict[str, dict[str, np.ndarray]]) -> Report:
    """The 1M-user report with a 14-day timeline (users arriving evenly), as the page draws it:
    the rendering cost depends on rows and days, not on users."""
    users = len(arrays["v1"]["correct"])
    start = dt.date(2025, 1, 1)
    daily = [
        DailySlice(
            day=start + dt.timedelta(days=d),
            variants=stats_from_arrays({
                v: {k: a[: users * (d + 1) // DAYS] for k, a in cols.items()}
                for v, cols in arrays.items()
            }),
        )
        for d in range(DAYS)
    ]  # fmt: skip
    stats = stats_from_arrays(arrays)
    counts = {v: s["correct"].n for v, s in stats.items()}
    data = ExperimentData(
        control="v1", variants=stats, users=counts, days_run=DAYS, as_of=daily[-1].day,
        phases=[SrmPhase(label="50/50", expected={"v1": 1, "v2": 1}, observed=counts)],
        daily=daily,
    )  # fmt: skip
    return build_report(PLAN, data)


def render_seconds(built: Report) -> tuple[float, float]:
    """Seconds to render the terminal summary and the HTML page of ``built``."""
    header = Header(flag="bench", experiment="bench")
    started = time.perf_counter()
    Console(file=io.StringIO(), width=120).print(render(built, header))
    text = time.perf_counter() - started
    started = time.perf_counter()
    render_html(built, header)
    return text, time.perf_counter() - started


def _cases(stats: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    cases = []
    for name, kind in (("correct", "binary"), ("latency_ms", "continuous")):
        a, b = stats["v1"][name], stats["v2"][name]
        cases.append({
            "type": kind, "alpha": PLAN.alpha, "tuning": PLAN.sequential_tuning,
            "a": {"n": a.n, "sum": a.sum, "sum_sq": a.sum_sq},
            "b": {"n": b.n, "sum": b.sum, "sum_sq": b.sum_sq},
        })  # fmt: skip
    r = stats["v1"]["dl_per_gen"], stats["v2"]["dl_per_gen"]
    keys = ("n", "num_sum", "num_sum_sq", "den_sum", "den_sum_sq", "cross")
    cases.append({
        "type": "ratio", "alpha": PLAN.alpha, "tuning": PLAN.sequential_tuning,
        "a": {k: getattr(r[0], k) for k in keys}, "b": {k: getattr(r[1], k) for k in keys},
    })  # fmt: skip
    return cases


def external(python: Path, script: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), str(script)], input=json.dumps(request), capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _rel_diff(a: float | None, b: float) -> float:
    assert a is not None
    return abs(a - b) / max(abs(b), 1e-9)  # p-values near 0: absolute below 1e-9


def run(users: int = 1_000_000, rounds: int = 3) -> PartReport:
    part = PartReport(
        name="experiments-stats",
        title="Experiment report: 1M users/variant x 2 variants x 3 metrics",
        metrics=[Metric("seconds", "report s", 3), Metric("ms_stats", "from stats ms", 2)],
    )
    arrays = make_users(users)
    stats = stats_from_arrays(arrays)
    cases = _cases(stats)
    part.params = {"users_per_variant": users, "variants": 2, "metrics": 3, "rounds": rounds}
    report(stats)  # warm-up: imports, scipy's first calls
    gb_seen = sc_seen = None
    for _ in range(rounds):
        started = time.perf_counter()
        built = report(stats_from_arrays(arrays))
        part.add(FROM_ARRAYS, "seconds", time.perf_counter() - started)
        started = time.perf_counter()
        built = report(stats)
        elapsed = time.perf_counter() - started
        part.add(FROM_STATS, "seconds", elapsed)
        part.add(FROM_STATS, "ms_stats", elapsed * 1e3)
        gb_seen = external(GBSTATS, GB_SCRIPT, {"cases": cases, "repeats": 20})
        if gb_seen is not None:
            part.add(GB, "seconds", gb_seen["seconds"])
            part.add(GB, "ms_stats", gb_seen["seconds"] * 1e3)
        # spotify-confidence has no ratio metric in ZTest: binary and continuous only.
        sc_seen = external(CONFIDENCE, SC_SCRIPT, {"cases": cases[:2], "repeats": 5})
        if sc_seen is not None:
            part.add(SC, "seconds", sc_seen["seconds"])
            part.add(SC, "ms_stats", sc_seen["seconds"] * 1e3)
    rows = {(r.metric, r.treatment): r for r in built.metrics}
    ours = [rows[("correct", "v2")], rows[("latency_ms", "v2")], rows[("dl_per_gen", "v2")]]
    timed = report_with_timeline(arrays)
    render_seconds(timed)  # warm-up: matplotlib's import and font cache
    for _ in range(rounds):
        text_s, html_s = render_seconds(timed)
        part.add(RENDER_TEXT, "seconds", text_s)
        part.add(RENDER_HTML, "seconds", html_s)
    if gb_seen is None:
        part.notes.append(f"gbstats skipped: {GBSTATS} missing (run `make gbstats-venv`)")
    else:
        welch_gb = gb_seen["cases"][1]["absolute"]
        diffs = [
            _rel_diff(ours[1].fixed.absolute.ci.low, welch_gb["fixed"]["ci"][0]),
            _rel_diff(ours[1].fixed.p_value, welch_gb["fixed"]["p_value"]),
            _rel_diff(ours[1].sequential.absolute.ci.high, welch_gb["sequential"]["ci"][1]),
        ] + [
            _rel_diff(row.fixed.absolute.se, case["absolute"]["fixed"]["sd"])
            for row, case in zip(ours, gb_seen["cases"], strict=True)
        ]
        part.info["equal_to_gbstats_max_rel_diff"] = {"value": max(diffs)}
        part.notes.append(
            f"gbstats: Welch CI/p, GAVI sequence and the SEs of all 3 metrics agree to "
            f"{max(diffs):.1e} (relative)"
        )
    if sc_seen is None:
        part.notes.append(
            f"spotify-confidence skipped: {CONFIDENCE} missing (make confidence-venv)"
        )
    else:
        binary_ci = sc_seen["cases"][0]["ci"]
        cont_ci = sc_seen["cases"][1]["ci"]
        diffs = [
            _rel_diff(ours[0].fixed.absolute.ci.low, binary_ci[0]),
            _rel_diff(ours[1].fixed.absolute.ci.high, cont_ci[1]),
        ]
        part.info["equal_to_confidence_max_rel_diff"] = {"value": max(diffs)}
        part.notes.append(
            f"spotify-confidence: absolute-difference CIs agree to {max(diffs):.1e} (z vs Welch t "
            "at 1M users; their relative CI divides by the control mean without the delta term)"
        )
    part.target(
        "report from per-user arrays", part.median(FROM_ARRAYS, "seconds"), "<=", 10.0, " s"
    )
    part.notes.append(
        "trafficsplit rows include SRM, power (fixed + sequential design), both inferences and "
        "the verdict; gbstats/spotify rows are the bare tests timed in their own process"
    )
    return part
