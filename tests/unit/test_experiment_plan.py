"""The experiment plan validates like the rest of the flag: clear messages naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from experiments.plan import ExperimentPlan


def plan_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "hypothesis": "v2 answers more digits correctly",
        "metrics": [
            {"name": "correct", "type": "binary"},
            {"name": "latency_ms", "type": "continuous", "aggregation": "mean"},
            {"name": "generations", "type": "continuous", "aggregation": "count"},
            {"name": "downloads", "type": "continuous", "aggregation": "count"},
            {
                "name": "downloads_per_generation",
                "type": "ratio",
                "numerator": "downloads",
                "denominator": "generations",
            },
        ],
        "primary_metric": "correct",
        "guardrails": [{"metric": "latency_ms", "worst_change": 0.05}],
        "segments": ["tier"],
    }
    doc.update(overrides)
    return doc


def test_a_full_plan_validates_with_documented_defaults() -> None:
    plan = ExperimentPlan.model_validate(plan_doc())
    assert plan.metric("correct").aggregation == "any"
    assert plan.metric("downloads_per_generation").aggregation is None
    assert (plan.alpha, plan.power, plan.min_duration_days) == (0.05, 0.8, 7)
    assert plan.sequential and plan.correction == "holm"
    assert ExperimentPlan.model_validate(plan.model_dump(mode="json")) == plan


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"primary_metric": "clicks"}, "primary_metric: 'clicks' is not declared"),
        ({"guardrails": [{"metric": "nope", "worst_change": -0.1}]}, "guardrails.0.metric"),
        ({"guardrails": [{"metric": "correct", "worst_change": 0}]}, "must be non-zero"),
        ({"metrics": [{"name": "correct", "type": "binary", "aggregation": "sum"}]}, "any"),
        (
            {"metrics": [{"name": "r", "type": "ratio", "numerator": "x"}]},
            "needs numerator and denominator",
        ),
        (
            {"metrics": [{"name": "correct", "type": "binary"}] * 2},
            "duplicate names correct",
        ),
        ({"alpha": 0}, "alpha"),
        ({"power": 1.0}, "power"),
        ({"mde": float("nan")}, "mde"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_plans_say_what_to_fix(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ExperimentPlan.model_validate(plan_doc(**overrides))


def test_a_ratio_of_a_ratio_is_refused() -> None:
    doc = plan_doc()
    doc["metrics"].append(
        {
            "name": "rr",
            "type": "ratio",
            "numerator": "downloads_per_generation",
            "denominator": "downloads",
        }
    )
    with pytest.raises(ValidationError, match="is a ratio itself"):
        ExperimentPlan.model_validate(doc)
