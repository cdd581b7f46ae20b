"""tests/promql.py: the series and labels an expression reads, and what a live /metrics lacks."""

from __future__ import annotations

import pytest
from promql import (
    Grouping,
    PromQLSyntaxError,
    Selector,
    dashboard_queries,
    references,
    unknown_references,
)

EXPORTED = {
    "trafficsplit_requests_total": frozenset({"flag", "variant", "version", "outcome"}),
    "trafficsplit_request_duration_seconds_bucket": frozenset({"flag", "variant", "le"}),
    "trafficsplit_flag_revision": frozenset({"flag"}),
}


def test_names_labels_and_scoped_groupings() -> None:
    refs = references(
        'histogram_quantile(0.99, sum by (le, variant) (rate(trafficsplit_request_duration_seconds_bucket{flag=~"$flag"}[$__rate_interval])))'
        " / on (flag) group_left () max by (flag) (trafficsplit_flag_revision)"
    )
    assert refs.selectors == (
        Selector("trafficsplit_request_duration_seconds_bucket", frozenset({"flag"})),
        Selector("trafficsplit_flag_revision", frozenset()),
    )
    assert refs.groupings == (
        Grouping(
            "by",
            frozenset({"le", "variant"}),
            frozenset({"trafficsplit_request_duration_seconds_bucket"}),
        ),
        Grouping(
            "on",
            frozenset({"flag"}),
            frozenset(
                {"trafficsplit_request_duration_seconds_bucket", "trafficsplit_flag_revision"}
            ),
        ),
        Grouping("group_left", frozenset(), refs.metrics),
        Grouping("by", frozenset({"flag"}), frozenset({"trafficsplit_flag_revision"})),
    )


def test_trailing_by_keywords_strings_and_numbers_are_not_metrics() -> None:
    refs = references(
        'sum(rate(a_total{x="sum(b)", y!~"c|d"}[5m] offset 1h)) by (x) > bool 0.5e3'
        ' and on () vector(1) or label_replace(e, "dst", "$1", "src", "(.*)")'
    )
    assert refs.metrics == {"a_total", "e"}
    assert refs.selectors[0].labels == {"x", "y"}
    assert refs.groupings[0] == Grouping("by", frozenset({"x"}), frozenset({"a_total"}))


def test_recording_rule_names_with_colons_are_metric_names() -> None:
    assert references("flag:trafficsplit_fallback_ratio:rate5m > 0.05").metrics == {
        "flag:trafficsplit_fallback_ratio:rate5m"
    }


@pytest.mark.parametrize("expr", ["sum(rate(x[5m])", "sum(x))", "sum by x (y)", "x ? y"])
def test_unreadable_expressions_raise(expr: str) -> None:
    with pytest.raises(PromQLSyntaxError):
        references(expr)


def test_unknown_metrics_labels_and_groupings_are_reported() -> None:
    refs = [
        references('sum by (variant) (rate(trafficsplit_requests_total{flag="d"}[1m]))'),
        # the request duration has no version label (it moved to the attempt series)
        references("sum by (le, version) (rate(trafficsplit_request_duration_seconds_bucket[1m]))"),
        references('trafficsplit_requests_total{cohort="x"}'),
        references("trafficsplit_request_latency_seconds_bucket"),
        references('{__name__=~"trafficsplit_.*"}'),
        references("flag:recorded:rate5m{whatever='x'}"),
    ]
    assert unknown_references(refs, EXPORTED, recorded={"flag:recorded:rate5m"}) == [
        "by (version): not a label of trafficsplit_request_duration_seconds_bucket",
        "trafficsplit_requests_total: no label cohort",
        "trafficsplit_request_latency_seconds_bucket: not exported",
        "a selector without a metric name: ['__name__']",
    ]


def test_a_dashboard_that_uses_only_exported_series_has_no_problems() -> None:
    dashboard = {
        "panels": [
            {"id": 1, "type": "row", "panels": [
                {"id": 2, "title": "p99", "targets": [{"refId": "A", "expr": "histogram_quantile(0.99, sum by (le, variant) (rate(trafficsplit_request_duration_seconds_bucket[1m])))"}]},
            ]},
            {"id": 3, "title": "revision", "targets": [{"refId": "A", "expr": "max by (flag) (trafficsplit_flag_revision)"}, {"refId": "B"}]},
        ],
        "annotations": {"list": [{"name": "builtin"}, {"name": "changes", "expr": "changes(max by (flag) (trafficsplit_flag_revision)[1m:15s]) > 0"}]},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {"name": "flag", "type": "query", "query": {"query": "label_values(trafficsplit_requests_total, flag)"}},
        ]},
    }  # fmt: skip
    queries = dashboard_queries(dashboard)
    assert [where for where, _ in queries] == [
        "panel 2 'p99' ref A",
        "panel 3 'revision' ref A",
        "annotation 'changes'",
        "variable flag",
    ]
    assert queries[3][1] == 'trafficsplit_requests_total{flag!=""}'
    assert unknown_references((references(q) for _, q in queries), EXPORTED) == []
