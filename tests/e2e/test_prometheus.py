"""A real Prometheus scrapes a real sidecar under load, with the shipped rules loaded.

One stack for the module: redis-server (flags, events, signals), a tritonserver whose digits v2
fails every request (so fallbacks, an open circuit and failed attempts exist), a sidecar process
with ``--metrics-listen 127.0.0.1:0``, and Debian's prometheus scraping it every second and
evaluating deploy/prometheus/*-rules.yml every second. The tests then read the per-cohort series,
the recording rules' outputs and the alerts through Prometheus's HTTP API, check the Grafana
dashboard's and the rules' series and labels against the live ``/metrics``, and run every
dashboard query through Prometheus.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_harness import PrometheusServer
from promql import dashboard_queries, references, unknown_references
from servers import RedisServer, wait_until
from support import digits_flag
from triton_harness import TritonInstall, TritonServer, build_python_backend_repository

from flags.admin import FlagAdmin
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from flags.schema import parse_flag
from sidecar.launcher import SidecarProcess

pytestmark = [pytest.mark.redis, pytest.mark.triton, pytest.mark.prometheus]

ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = [
    ROOT / "deploy" / "prometheus" / n for n in ("recording-rules.yml", "alerting-rules.yml")
]
DASHBOARD = ROOT / "deploy" / "grafana" / "trafficsplit-dashboard.json"
PIXELS = np.zeros((1, 64), np.float32)
HALF_AND_HALF = {
    "rules": [],
    "allocation": {"coverage": 100, "split": {"control": 50, "candidate": 50}},
}
# Grafana's variables, as Grafana would substitute them (all flags, a short range).
GRAFANA = {
    "$__rate_interval": "1m", "$__range": "5m", "$__interval": "1s", "$flag": ".*", "$membership": ".*"
}  # fmt: skip


@dataclass
class Stack:
    sidecar: SidecarProcess
    prometheus: PrometheusServer
    cohorts: Counter[tuple[str, str, str, str]]  # (variant, membership, version, outcome) → n

    def exported(self) -> dict[str, frozenset[str]]:
        """Sample name → label names, from the sidecar's live /metrics."""
        text = urlopen(self.sidecar.metrics_url, timeout=5).read().decode()
        labels: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
        return {name: frozenset(names) for name, names in labels.items()}

    def value(self, expr: str) -> float | None:
        result = self.prometheus.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None


def infer(client: triton.InferenceServerClient, user: str) -> tuple[str, str, str, str]:
    tensor = triton.InferInput("pixels", [1, 64], "FP32")
    tensor.set_data_from_numpy(PIXELS)
    response = client.infer(
        "digits", [tensor], headers={"x-user-id": user}, client_timeout=10
    ).get_response()
    params = response.parameters
    cause = params["trafficsplit.fallback_cause"].string_param
    return (
        params["trafficsplit.variant"].string_param,
        params["trafficsplit.membership"].string_param,
        response.model_version,
        f"fallback_{cause}" if cause else "served",
    )


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer,
    triton_install: TritonInstall,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("prometheus-stack")
    prefix = "promtest:"
    admin = FlagAdmin(sync_client(redis_server.url), keys=RedisKeys(prefix), actor="e2e")
    admin.apply(parse_flag(digits_flag(**HALF_AND_HALF)), reason="e2e", force=True)
    # A second flag whose document a raw DEL removes once the sidecar serves it: data loss.
    admin.apply(parse_flag(digits_flag(key="ghost", rules=[])), reason="e2e", force=True)
    fail_file = tmp / "v2-fails"
    fail_file.touch()  # digits v2 answers every request with an error
    repository = build_python_backend_repository(tmp / "models", (1, 2), fail_files={2: fail_file})
    args = ["--redis-url", redis_server.url, "--redis-prefix", prefix,
            "--metrics-listen", "127.0.0.1:0"]  # fmt: skip
    with (
        TritonServer(repository, install=triton_install) as server,
        SidecarProcess(
            [*args, "--triton-url", server.grpc_url], stderr_path=tmp / "sidecar.log"
        ) as sidecar,
    ):
        target = sidecar.metrics_url.removeprefix("http://").removesuffix("/metrics")
        with PrometheusServer(tmp / "prometheus", targets=[target], rule_files=RULE_FILES) as prom:
            st = Stack(sidecar, prom, Counter())
            wait_until(lambda: st.exported().get("trafficsplit_flag_revision"), timeout=10,
                       what="the sidecar to serve its flags")  # fmt: skip
            redis_server.client().delete(RedisKeys(prefix).flag("ghost"))
            wait_until(
                lambda: st.value('trafficsplit_flag_store_missing{flag="ghost"}') == 1,
                timeout=20, interval=0.2, what="the ghost flag reported missing",
            )  # fmt: skip
            client = triton.InferenceServerClient(sidecar.address)
            try:
                # A first batch creates the series; once Prometheus has scraped them, the second
                # batch is what rate() sees (a counter's first sample is its baseline).
                st.cohorts.update(infer(client, f"user-{i}") for i in range(40))
                wait_until(
                    lambda: st.value("sum(trafficsplit_requests_total)") == 40,
                    timeout=20, interval=0.2, what="Prometheus to scrape the first batch",
                )  # fmt: skip
                st.cohorts.update(infer(client, f"user-{i}") for i in range(40, 440))
            finally:
                client.close()
            wait_until(
                lambda: st.value("sum(trafficsplit_requests_total)") == 440,
                timeout=20, interval=0.2, what="Prometheus to scrape the load",
            )  # fmt: skip
            yield st


def test_per_cohort_series_reach_prometheus_exactly(stack: Stack) -> None:
    result = stack.prometheus.query(
        'sum by (variant, membership, version, outcome) (trafficsplit_requests_total{flag="digits"})'
    )
    seen = {
        (r["metric"]["variant"], r["metric"]["membership"], r["metric"]["version"],
         r["metric"]["outcome"]): int(float(r["value"][1]))
        for r in result
    }  # fmt: skip
    assert seen == dict(stack.cohorts)  # what each user was told is what Prometheus counts
    candidates = sum(n for (variant, *_), n in stack.cohorts.items() if variant == "candidate")
    assert 150 < candidates < 290  # a 50/50 split of 440 users
    # Every candidate user was answered by v1 (v2 fails): by an error, then by the open circuit.
    assert {k[2:] for k in stack.cohorts if k[0] == "candidate"} == {
        ("1", "fallback_error"),
        ("1", "fallback_circuit_open"),
    }
    fallbacks = stack.value('sum(trafficsplit_fallbacks_total{flag="digits",from_version="2"})')
    assert fallbacks == candidates


def test_recording_rules_and_alerts_evaluate_on_the_live_series(stack: Stack) -> None:
    prom = stack.prometheus
    ratio = "flag_version:trafficsplit_attempt_error_ratio:rate5m"
    # Every candidate attempt failed (INTERNAL, or skipped while the circuit was open); none of v1's.
    wait_until(lambda: stack.value(f'{ratio}{{version="2"}}') == 1.0, timeout=20, interval=0.2,
               what="the error ratio rule over the scraped load")  # fmt: skip
    assert stack.value(f'{ratio}{{version="1"}}') == 0.0
    stable = prom.query('flag:trafficsplit_stable_version:info{flag="digits"}')
    assert [r["metric"] for r in stable] == [
        {"__name__": "flag:trafficsplit_stable_version:info", "flag": "digits",
         "model": "digits", "version": "1"}
    ]  # fmt: skip
    minus = "flag_version:trafficsplit_attempt_error_ratio_minus_stable:rate5m"
    assert [r["metric"]["version"] for r in prom.query(minus)] == ["2"]
    assert stack.value(minus) == 1.0
    assert stack.value('flag:trafficsplit_fallback_ratio:rate5m{flag="digits"}') is not None
    # No rule failed to evaluate on real data (a many-to-many match would show here).
    groups = prom.api("rules")["groups"]
    assert {g["name"] for g in groups} == {
        "trafficsplit-recording", "trafficsplit-guardrails", "trafficsplit-sidecar"
    }  # fmt: skip
    broken = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"]
              if r["health"] != "ok"]  # fmt: skip
    assert broken == []

    def alerts() -> dict[tuple[str, str], str]:
        def subject(labels: dict[str, str]) -> str:
            return labels.get("version") or labels.get("target") or labels.get("flag", "")

        return {(a["labels"]["alertname"], subject(a["labels"])): a["state"]
                for a in prom.api("alerts")["alerts"]}  # fmt: skip

    expected = {
        ("TrafficsplitCandidateErrorRateHigh", "2"): "pending",  # for: 1m
        ("TrafficsplitCandidateErrorBurst", "2"): "firing",  # fast burn: no `for`
        ("TrafficsplitCandidateErrorRateAboveStable", "2"): "pending",
        ("TrafficsplitCircuitOpen", "digits:2"): "pending",
        # Half the users were answered by a fallback (for: 5m).
        ("TrafficsplitFallbackRateHigh", "digits"): "pending",
        # The raw DEL of the ghost flag: data loss (no `for`), and a stale store (for: 1m).
        ("TrafficsplitFlagDataLoss", "ghost"): "firing",
        ("TrafficsplitFlagStoreStale", ""): "pending",
    }
    wait_until(lambda: expected.items() <= alerts().items(), timeout=20, interval=0.2,
               what=f"alerts {sorted(expected)}")  # fmt: skip
    # Nothing else: not the stable version, not readiness, auth, events or signals.
    assert alerts() == expected


def test_dashboard_uses_only_series_and_labels_the_sidecar_exports(stack: Stack) -> None:
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    assert len(queries) >= 15
    problems = unknown_references((references(q) for _, q in queries), stack.exported())
    assert problems == []


def test_every_dashboard_query_returns_data_through_prometheus(stack: Stack) -> None:
    empty = []
    for where, expr in dashboard_queries(json.loads(DASHBOARD.read_text())):
        for variable, value in GRAFANA.items():
            expr = expr.replace(variable, value)
        result = stack.prometheus.query(expr)  # raises on a query Prometheus rejects
        # The flag-change annotation marks revision changes: none happened in this stack.
        if not result and not where.startswith("annotation"):
            empty.append(where)
    assert empty == []


def test_rules_read_only_series_and_labels_the_sidecar_exports(stack: Stack) -> None:
    docs = [yaml.safe_load(p.read_text()) for p in RULE_FILES]
    rules = [r for doc in docs for g in doc["groups"] for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    problems = unknown_references(
        (references(r["expr"]) for r in rules), stack.exported(), recorded=recorded
    )
    assert problems == []
    # ... and every raw series a rule reads exists, not only as a family without samples.
    raw = {m for r in rules for m in references(r["expr"]).metrics} - recorded
    assert raw <= stack.exported().keys()
    assert {m for m in raw if re.match(r"trafficsplit_(events|signal)_", m)}  # covered too
