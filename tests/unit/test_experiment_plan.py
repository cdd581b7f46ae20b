"""The flag's `experiment` section: validated with the flag, clear messages, the experiment id."""

from __future__ import annotations

import pytest
from support_events import EXPERIMENT, experiment_flag

from flags.errors import FlagValidationError
from flags.experiment_plan import experiment_id
from flags.schema import parse_flag


def test_a_flag_with_an_experiment_section_parses() -> None:
    spec = parse_flag(experiment_flag())
    plan = spec.experiment
    assert plan is not None
    assert plan.primary.name == "correct"
    assert plan.primary.per_user == "any"
    assert plan.metric("latency_ms") is not None and plan.metric("latency_ms").per_user == "mean"  # type: ignore[union-attr]
    assert plan.trackable() == {"correct", "latency_ms", "clicks", "downloads", "generations"}
    assert plan.min_duration_days == 7.0
    assert parse_flag(spec.to_json()) == spec  # round-trips through the stored JSON


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"metrics": []}, "experiment.metrics"),
        ({"primary_metric": "nope"}, "primary_metric: 'nope' is not a declared metric"),
        ({"metrics": [{"name": "r", "type": "ratio"}]}, "needs `numerator` and `denominator`"),
        (
            {"metrics": [{"name": "b", "type": "binary", "aggregation": "sum"}]},
            "a binary metric is aggregated with `any`",
        ),
        ({"metrics": [{"name": "m", "type": "gauge"}]}, "experiment.metrics.0.type"),
        ({"guardrails": [{"metric": "ghost", "worst_change": -0.1}]}, "'ghost'"),
        ({"segments": ["tier", "tier"]}, "each attribute must appear once"),
        ({"alpha": 1.5}, "experiment.alpha"),
        ({"colour": "red"}, "experiment.colour: is not a known field"),
    ],
)
def test_a_bad_experiment_section_is_rejected_with_its_path(
    change: dict[str, object], expected: str
) -> None:
    with pytest.raises(FlagValidationError) as caught:
        parse_flag(experiment_flag(experiment={**EXPERIMENT, **change}))
    assert any(expected in issue for issue in caught.value.issues), caught.value.issues


def test_the_experiment_id_changes_with_the_salt_unless_named() -> None:
    plan = parse_flag(experiment_flag()).experiment
    assert experiment_id("digits", "", plan) == "digits"
    assert experiment_id("digits", "s2", plan) == "digits@s2"
    named = parse_flag(experiment_flag(experiment={**EXPERIMENT, "id": "digits-q3"})).experiment
    assert experiment_id("digits", "s2", named) == "digits-q3"
