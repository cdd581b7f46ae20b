"""The flag's `experiment` section through the flag's own validation (parse_flag): embedded,
reported with its path, and the experiment id and trackable metrics the event path uses. The
plan's own rules are tested in test_experiment_plan.py."""

from __future__ import annotations

import pytest
from support_events import EXPERIMENT, experiment_flag

from flags.errors import FlagValidationError
from flags.experiment_plan import experiment_id, trackable_metrics
from flags.schema import parse_flag


def test_a_flag_with_an_experiment_section_parses_and_round_trips() -> None:
    spec = parse_flag(experiment_flag())
    plan = spec.experiment
    assert plan is not None
    assert plan.metric("correct").aggregation == "any"
    assert trackable_metrics(plan) == {
        "correct", "latency_ms", "clicks", "downloads", "generations",
    }  # fmt: skip
    assert parse_flag(spec.to_json()) == spec  # round-trips through the stored JSON


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"metrics": []}, "experiment.metrics"),
        ({"primary_metric": "nope"}, "primary_metric: 'nope' is not declared"),
        ({"metrics": [{"name": "m", "type": "gauge"}]}, "experiment.metrics.0"),
        ({"colour": "red"}, "experiment.colour: is not a known field"),
    ],
)
def test_a_bad_experiment_section_rejects_the_flag_with_its_path(
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
