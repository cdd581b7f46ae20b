"""Prometheus metrics per (flag, variant, served version, status), plus flag-store state.

Request counters are aggregated in memory by prometheus_client (a few hundred ns per update, no
I/O) and scraped from ``--metrics-listen``. Store state (revision per flag, staleness, rejected
documents) is read from the store at scrape time by a collector, never pushed from the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from flags.store import FlagStore

LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    10,
)


class SidecarMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("flag", "variant", "version", "status")
        self.requests = Counter(
            "trafficsplit_requests",
            "Inference requests by cohort and served version.",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "trafficsplit_request_duration_seconds",
            "Sidecar latency per request (routing plus backend).",
            ("flag", "variant", "version"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "trafficsplit_fallbacks",
            "Requests the default variant answered "
            "because the cohort's version failed (cause: error | circuit_open).",
            ("flag", "from_version", "to_version", "cause"),
            registry=self.registry,
        )

        self._children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}

    def observe(self, flag: str, variant: str, version: str, status: str, seconds: float) -> None:
        key = (flag, variant, version, status)
        children = self._children.get(key)
        if children is None:  # labels() costs a lock and a tuple per call: look it up once
            children = (self.requests.labels(*key), self.latency.labels(flag, variant, version))
            self._children[key] = children
        children[0].inc()
        if status == "OK":
            children[1].observe(seconds)

    def watch_store(self, store: FlagStore) -> None:
        self.registry.register(_StoreCollector(store))

    def serve(self, listen: str) -> int:
        """Expose ``/metrics`` over HTTP on ``host:port`` (a daemon thread); returns the port."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(
            int(port), addr=host or "127.0.0.1", registry=self.registry
        )
        return int(server.server_port)


class _StoreCollector(Collector):
    def __init__(self, store: FlagStore) -> None:
        self._store = store

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        health = self._store.health
        revision = GaugeMetricFamily(
            "trafficsplit_flag_revision", "Revision of each flag being served.", labels=["flag"]
        )
        for key, flag in self._store.snapshot.items():
            revision.add_metric([key], flag.revision)
        yield revision
        yield GaugeMetricFamily(
            "trafficsplit_flag_store_stale",
            "1 while the flag source is unreachable and the last good flags serve.",
            value=1 if health.stale else 0,
        )
        yield GaugeMetricFamily(
            "trafficsplit_flag_store_loaded",
            "1 once flags were loaded.",
            value=1 if health.loaded else 0,
        )
        yield CounterMetricFamily(
            "trafficsplit_flag_rejections",
            "Flag documents rejected as invalid.",
            value=health.rejected_total,
        )
