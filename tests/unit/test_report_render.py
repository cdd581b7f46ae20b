"""The report's renderers over fixed reports: the terminal summary, the HTML page, the shared view.

Reports come from the real path (events → in-memory DuckDB store → experiment_data →
build_report) at a fixed clock, so every number below is exact and the renderers are checked
against the report they were given, never against numbers of their own.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from rich.console import Console
from support_report import DAY_MS, FLAG_FILE, T0, two_weeks

from experiments.data import experiment_data
from experiments.events.model import Exposure
from experiments.report import Report, TimelinePoint, build_report
from experiments.report_html import render_html
from experiments.report_text import render
from experiments.report_view import (
    Header,
    UnknownMetric,
    headline,
    new_users_by_day,
    only_metric,
    p_value,
    pct,
)
from experiments.stats.model import Interval
from experiments.store import ExperimentStore
from flags.schema import FlagSpec, parse_flag

HEADER = Header(flag="digits", experiment="digits")


def spec(**experiment: object) -> FlagSpec:
    doc = json.loads(FLAG_FILE.read_text())
    doc["experiment"].update(experiment)
    return parse_flag(doc)


def report_of(flag: FlagSpec, days: int = 14, **kwargs: float) -> Report:
    store = ExperimentStore()
    store.add(two_weeks(days=days, **kwargs))
    data = experiment_data(store, flag, now_ms=T0 + days * DAY_MS)
    assert flag.experiment is not None
    return build_report(flag.experiment, data)


@pytest.fixture(scope="module")
def shipped() -> Report:
    return report_of(spec())


def text_of(report: Report, width: int = 140) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(render(report, HEADER))
    return console.export_text()


def test_the_terminal_summary_leads_with_the_verdict_and_shows_every_reported_number(
    shipped: Report,
) -> None:
    assert shipped.decision.verdict == "ship" and shipped.decision.variant == "candidate"
    lines = [line.strip() for line in text_of(shipped).splitlines() if line.strip()]
    assert lines[:2] == ["digits: experiment digits", "SHIP CANDIDATE"]
    assert lines[2] == "• " + shipped.decision.reasons[0]
    text = " ".join(lines)
    assert "control 2,469, candidate 1,731; 0 mixed-exposure users excluded" in text
    for row in shipped.metrics:  # each test's statistic and p-value, fixed and sequential
        for c in (row.fixed, row.sequential):
            assert f"p = {p_value(c.p_value)}" in text
            assert f"statistic {c.statistic:.3f}" in text
        assert f"adjusted: p = {p_value(row.p_adjusted)}" in text
    for phase in shipped.srm.phases:
        assert f"phase {phase.label}" in text and f"p = {p_value(phase.p_value)}" in text
    assert f"{shipped.power.required_per_variant:,} users per variant" in text
    assert f"progress {pct(shipped.power.progress, signed=False)}" in text
    assert "latency_ms   candidate   +25.00%" in text and "safe" in text
    assert "tier=free" in text and "tier=pro" in text
    assert "Holm-Bonferroni" in text  # the segment families' correction, named


def test_json_is_the_report_itself_and_carries_what_the_summary_shows(shipped: Report) -> None:
    dumped = json.loads(json.dumps(shipped.model_dump(mode="json")))
    assert dumped["decision"]["verdict"] == "ship"
    assert dumped["metrics"][0]["fixed"]["statistic"] == shipped.metrics[0].fixed.statistic
    assert dumped["metrics"][0]["sequential"]["p_value"] == shipped.metrics[0].sequential.p_value
    assert Report.model_validate(dumped) == shipped


def test_metric_filter_narrows_rows_but_keeps_the_verdict(shipped: Report) -> None:
    narrowed = only_metric(shipped, "latency_ms")
    assert {r.metric for r in narrowed.metrics} == {"latency_ms"}
    assert {r.metric for r in narrowed.segments} == {"latency_ms"}
    assert narrowed.decision == shipped.decision and narrowed.timeline == shipped.timeline
    assert only_metric(shipped, None) is shipped
    with pytest.raises(UnknownMetric, match=r"'clicks' is not declared \(declared: correct, "):
        only_metric(shipped, "clicks")


def test_keep_running_says_until_when_and_invalid_says_why() -> None:
    early = report_of(spec(min_duration_days=30), days=3)
    assert early.decision.verdict == "keep_running" and early.decision.until is not None
    assert headline(early) == f"Keep running until {early.decision.until.isoformat()}"
    assert text_of(early).lstrip().splitlines()[1].strip() == headline(early).upper()
    # The candidate's users halved after exposure logging broke: a sample ratio mismatch.
    store = ExperimentStore()
    events = two_weeks(days=3)
    candidates = [e.user_id for e in events if isinstance(e, Exposure) and e.variant == "candidate"]
    dropped = set(candidates[::2])
    store.add([e for e in events if e.user_id not in dropped])
    broken = spec()
    assert broken.experiment is not None
    invalid = build_report(
        broken.experiment, experiment_data(store, broken, now_ms=T0 + 3 * DAY_MS)
    )
    assert invalid.decision.verdict == "invalid" and headline(invalid) == "Invalid"
    page = render_html(invalid, HEADER)
    assert "Sample ratio mismatch in phase" in page and "mismatch</div>" in page


def test_new_users_per_day_come_from_the_cumulative_timeline(shipped: Report) -> None:
    series = new_users_by_day(shipped)
    assert set(series) == {"control", "candidate"}
    assert sum(n for _, n in series["control"]) == shipped.users["control"]
    assert sum(n for _, n in series["candidate"]) == shipped.users["candidate"]
    assert [d for d, _ in series["control"]][:2] == [dt.date(2026, 1, 1), dt.date(2026, 1, 2)]
    none = Interval(low=None, high=None)
    point = TimelinePoint(day=dt.date(2026, 1, 1), treatment="b", users_control=5,
                          users_treatment=3, estimate=None, fixed_ci=none, sequential_ci=none,
                          relative=True)  # fmt: skip
    later = point.model_copy(update={"day": dt.date(2026, 1, 2), "users_control": 12,
                                     "users_treatment": 3})  # fmt: skip
    one = shipped.model_copy(update={"timeline": [later, point], "control": "a"})
    assert new_users_by_day(one) == {
        "a": [(dt.date(2026, 1, 1), 5), (dt.date(2026, 1, 2), 7)],
        "b": [(dt.date(2026, 1, 1), 3), (dt.date(2026, 1, 2), 0)],
    }


def test_the_page_is_self_contained_and_puts_the_verdict_first(shipped: Report) -> None:
    page = render_html(shipped, HEADER)
    assert page.startswith("<!DOCTYPE html>")
    order = ["Ship candidate", "Primary metric: correct", "Guardrails", "Exposures per day",
             "Sample ratio (SRM)", "Sample size", "All metrics", "Segments",
             "The plan it was judged against"]  # fmt: skip
    positions = [page.index(s) for s in order]
    assert positions == sorted(positions)
    assert page.count("<svg") == 3  # exposures, the interval over time, all metrics
    # Nothing to fetch: no script, no stylesheet link, no reference outside the page itself
    # (the SVGs' clip paths and glyph uses point at "#ids" in the same document).
    assert not re.search(r"<script|<link|<img|<iframe|@import", page)
    assert not re.search(r"url\((?!#)", page)
    assert not re.search(r"\b(src|href)\s*=\s*\"(?!#)", page)
    assert re.search(r"url\(#", page)  # the check would see a reference
    for row in shipped.metrics:
        assert p_value(row.fixed.p_value) in page and p_value(row.sequential.p_value) in page
    assert shipped.plan.hypothesis is not None and shipped.plan.hypothesis in page


def test_text_from_a_flag_is_escaped_in_the_page() -> None:
    hostile = report_of(spec(hypothesis='<script>alert("x")</script> & more'), days=2)
    page = render_html(hostile, Header(flag="<b>digits</b>", experiment="d&x"))
    assert "<script" not in page and "<b>digits</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in page
    assert "&lt;b&gt;digits&lt;/b&gt;" in page and "d&amp;x" in page


def test_a_report_without_outcomes_yet_still_renders() -> None:
    store = ExperimentStore()
    store.add([e for e in two_weeks(days=1) if isinstance(e, Exposure)])
    flag = spec()
    assert flag.experiment is not None
    empty = build_report(flag.experiment, experiment_data(store, flag, now_ms=T0 + DAY_MS))
    page = render_html(empty, HEADER)
    text = text_of(empty)
    assert "KEEP RUNNING" in text.upper() and "Keep running" in page
