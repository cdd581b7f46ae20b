"""Prometheus metrics: one series set per experiment group, keyed by the attempted target.

Request series carry ``membership`` (exposed, targeted, not_in_experiment, pinned, unflagged), so
the experiment's groups are never mixed with pinned golden-set runs or users outside coverage,
and ``outcome`` (served, fallback_<cause>, failed): fallback is an outcome, not a membership.
Failed requests are timed too. Attempt series are keyed by the (backend, model, version) that
was *attempted*, so a candidate's failures count against the candidate even when the default
variant answered. Durations use one bucket scheme (:mod:`signals.latency`).

Counters are aggregated in memory by prometheus_client (a few hundred ns per update, no I/O) by
the :class:`MetricsObserver`; circuit, readiness and flag-store state are read at scrape time by
collectors, never pushed from the hot path. Every series is described in docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from flags.health import SourceStatus
from flags.store import FlagStore
from sidecar.circuit import CircuitBreaker, CircuitState
from sidecar.observers import Exchange, Observer
from sidecar.outcome import RequestOutcome
from sidecar.series import CounterSeries, HistogramChild, HistogramSeries
from signals.latency import PROMETHEUS_BUCKETS


class SidecarMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # The four series every request updates: lock-free (sidecar.series).
        self.requests = CounterSeries(
            "trafficsplit_requests",
            "Inference requests by experiment group, served version, outcome and gRPC status.",
            ("flag", "variant", "membership", "model", "version", "outcome", "status"),
        )
        self.latency = HistogramSeries(
            "trafficsplit_request_duration_seconds",
            "Sidecar latency per request, failed ones included (routing plus backend calls).",
            ("flag", "variant", "membership", "outcome"),
            PROMETHEUS_BUCKETS,
        )
        self.attempts = CounterSeries(
            "trafficsplit_attempts",
            "Backend calls by attempted target and result (OK, an error kind, or CIRCUIT_OPEN / "
            "NOT_READY for calls skipped).",
            ("flag", "membership", "backend", "model", "version", "result"),
        )
        self.attempt_latency = HistogramSeries(
            "trafficsplit_attempt_duration_seconds",
            "Duration of each backend call, by attempted target (skipped calls not included).",
            ("flag", "backend", "model", "version"),
            PROMETHEUS_BUCKETS,
        )
        for series in (self.requests, self.latency, self.attempts, self.attempt_latency):
            r.register(series)
        self.fallbacks = Counter(
            "trafficsplit_fallbacks",
            "Requests the default variant answered because the cohort's version did not "
            "(cause: error | timeout | circuit_open | not_ready).",
            ("flag", "from_version", "to_version", "cause"),
            registry=r,
        )
        self.assignments = Counter(
            "trafficsplit_assignments",
            "Assign calls (the assignment alone, no inference).",
            ("flag", "variant", "membership"),
            registry=r,
        )
        self.errors = Counter(
            "trafficsplit_grpc_errors",
            "Calls answered with an error status, by method and code (bad input included).",
            ("method", "status"),
            registry=r,
        )

    def watch_store(self, store: FlagStore) -> None:
        self.registry.register(_StoreCollector(store))

    def watch_breaker(self, breaker: CircuitBreaker) -> None:
        self.registry.register(_BreakerCollector(breaker))

    def watch_readiness(
        self, unready: Callable[[], Mapping[str, str]], known: Callable[[], Any]
    ) -> None:
        """``unready()``: version key → reason for versions flags route to that are not ready;
        ``known()``: every version key readiness checks."""
        self.registry.register(_ReadinessCollector(unready, known))

    def serve(self, listen: str) -> int:
        """Expose ``/metrics`` over HTTP on ``host:port`` (a daemon thread); returns the port."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(
            int(port), addr=host or "127.0.0.1", registry=self.registry
        )
        return int(server.server_port)


class MetricsObserver(Observer):
    """Records each settled request into :class:`SidecarMetrics`, with the label children of
    each series cached per label set (a tuple build and a dict lookup per update)."""

    def __init__(self, metrics: SidecarMetrics) -> None:
        self._m = metrics
        self._requests: dict[tuple[Any, ...], tuple[list[int], HistogramChild]] = {}
        self._attempts: dict[tuple[Any, ...], tuple[list[int], HistogramChild]] = {}

    def on_settled(self, exchange: Exchange, outcome: RequestOutcome) -> None:
        a = outcome.assignment
        plan = a.plan
        settlement = outcome.settlement
        key = (plan.flag, plan.variant, plan.membership, a.served.model, a.served_version,
               settlement, outcome.status)  # fmt: skip
        children = self._requests.get(key)
        if children is None:
            children = self._requests[key] = self._request_children(key)
        children[0][0] += 1
        children[1].observe(outcome.seconds)
        for attempt in outcome.attempts:
            akey = (plan.flag, plan.membership, attempt.backend, attempt.model, attempt.version,
                    attempt.result)  # fmt: skip
            achildren = self._attempts.get(akey)
            if achildren is None:
                achildren = self._attempts[akey] = self._attempt_children(akey)
            achildren[0][0] += 1
            if attempt.sent:
                achildren[1].observe(attempt.seconds)
        if a.fallback is not None:
            self._m.fallbacks.labels(
                plan.flag, plan.primary.version, a.served_version, a.fallback
            ).inc()

    def _request_children(self, key: tuple[Any, ...]) -> tuple[list[int], HistogramChild]:
        labels = tuple(str(v) for v in key)
        flag, variant, membership, _, _, settlement, _ = labels
        return (
            self._m.requests.child(labels),
            self._m.latency.child((flag, variant, membership, settlement)),
        )

    def _attempt_children(self, key: tuple[Any, ...]) -> tuple[list[int], HistogramChild]:
        labels = tuple(str(v) for v in key)
        flag, _, backend, model, version, _ = labels
        return (
            self._m.attempts.child(labels),
            self._m.attempt_latency.child((flag, backend, model, version)),
        )

    def on_assign(self, exchange: Exchange) -> None:
        a = exchange.assignment
        assert a is not None
        self._m.assignments.labels(a.flag, a.variant, a.membership).inc()


class _BreakerCollector(Collector):
    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "trafficsplit_circuit_state",
            "1 for the state each model version's circuit is in (closed, open, half_open); "
            "versions that never failed are closed and not listed.",
            labels=["target", "state"],
        )
        for key, current in self._breaker.states().items():
            for option in CircuitState:
                state.add_metric([key, option], 1 if option is current else 0)
        yield state
        yield CounterMetricFamily(
            "trafficsplit_circuit_opens",
            "Times a circuit opened after a burst of failures.",
            value=self._breaker.opened,
        )
        probes = CounterMetricFamily(
            "trafficsplit_circuit_probes",
            "Half-open probes by how they ended (succeeded, failed, released: the call told "
            "nothing about the version, e.g. a client error or a cancellation).",
            labels=["result"],
        )
        for result, count in self._breaker.probes.items():
            probes.add_metric([result], count)
        yield probes


class _ReadinessCollector(Collector):
    def __init__(self, unready: Callable[[], Mapping[str, str]], known: Callable[[], Any]) -> None:
        self._unready = unready
        self._known = known

    def collect(self) -> Iterator[GaugeMetricFamily]:
        unready = self._unready()
        ready = GaugeMetricFamily(
            "trafficsplit_version_ready",
            "1 when a model version some flag routes to is ready on the backend, else 0.",
            labels=["target"],
        )
        for key in sorted(self._known()):
            ready.add_metric([key], 0 if key in unready else 1)
        yield ready


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
        # Which version is each flag's stable one: Prometheus alert rules compare a candidate
        # with it (deploy/prometheus/), and only the flag knows which variant is the default.
        variants = GaugeMetricFamily(
            "trafficsplit_flag_variant_info",
            '1 for each variant of each flag being served, with its target; default="true" for '
            "the default (stable) variant.",
            labels=["flag", "variant", "model", "version", "default"],
        )
        for key, flag in self._store.snapshot.items():
            for name, target in flag.spec.variants.items():
                default = "true" if name == flag.spec.default_variant else "false"
                variants.add_metric([key, name, target.model, target.version, default], 1)
        yield variants
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
        yield CounterMetricFamily(
            "trafficsplit_flag_store_data_loss",
            "Flags whose document disappeared without a `flagctl delete` (raw DEL, FLUSHALL, an "
            "empty failover); each keeps serving its last good version.",
            value=health.data_loss_total,
        )
        missing = GaugeMetricFamily(
            "trafficsplit_flag_store_missing",
            "1 for each flag served from its last good version because its document is missing.",
            labels=["flag"],
        )
        for key in health.missing_flags:
            missing.add_metric([key], 1)
        yield missing
        status = GaugeMetricFamily(
            "trafficsplit_flag_source_status",
            "1 for the flag source's state: ok, unreachable, or auth (credentials or ACL "
            "permissions refused: fix the configuration; never reported as unreachable).",
            labels=["status"],
        )
        for option in SourceStatus:
            status.add_metric([str(option)], 1 if health.source_status is option else 0)
        yield status
