"""Helpers shared by the experiment-event tests (import as ``from support_events import ...``)."""

from __future__ import annotations

from typing import Any

from support import digits_flag

EXPERIMENT = {
    "hypothesis": "v2 reads more digits correctly",
    "metrics": [
        {"name": "correct", "type": "binary"},
        {"name": "latency_ms", "type": "continuous", "aggregation": "mean"},
        {"name": "clicks", "type": "continuous", "aggregation": "count"},
        {"name": "downloads", "type": "continuous"},
        {"name": "generations", "type": "continuous"},
        {
            "name": "downloads_per_generation",
            "type": "ratio",
            "numerator": "downloads",
            "denominator": "generations",
        },
    ],
    "primary_metric": "correct",
    "segments": ["tier"],
}


def experiment_flag(candidate: float = 50.0, **overrides: Any) -> dict[str, Any]:
    """The demo flag with an experiment section and a plain split (no rules, no shadow)."""
    doc = digits_flag(
        rules=[],
        allocation={"coverage": 100, "split": {"control": 100 - candidate, "candidate": candidate}},
        shadow=None,
        ramp=None,
        experiment=EXPERIMENT,
    )
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}
