"""trafficsplit_flag_variant_info: which version is each flag's stable one, for Prometheus rules
(deploy/prometheus/recording-rules.yml joins on it)."""

from __future__ import annotations

import json

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import digits_flag

from flags.store import FlagStore
from sidecar.metrics import SidecarMetrics


def variant_info(metrics: SidecarMetrics) -> list[tuple[tuple[str, str], ...]]:
    text = generate_latest(metrics.registry).decode()
    return sorted(
        tuple(sorted(s.labels.items()))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "trafficsplit_flag_variant_info" and s.value == 1
    )


def test_each_variant_is_listed_with_its_target_and_the_default_marked() -> None:
    store = FlagStore()
    metrics = SidecarMetrics()
    metrics.watch_store(store)
    assert variant_info(metrics) == []  # no flags yet: no series
    store.sync({"digits": json.dumps(digits_flag())}, complete=True)
    assert variant_info(metrics) == [
        (("default", "false"), ("flag", "digits"), ("model", "digits"),
         ("variant", "candidate"), ("version", "2")),
        (("default", "true"), ("flag", "digits"), ("model", "digits"),
         ("variant", "control"), ("version", "1")),
    ]  # fmt: skip
    # Promoting the candidate moves the default label with it at the next scrape.
    store.sync({"digits": json.dumps(digits_flag(default_variant="candidate", revision=2, ramp=None, shadow=None))},
               complete=True)  # fmt: skip
    defaults = [dict(labels)["variant"] for labels in variant_info(metrics)
                if dict(labels)["default"] == "true"]  # fmt: skip
    assert defaults == ["candidate"]
