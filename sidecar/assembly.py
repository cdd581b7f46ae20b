"""The request path, assembled from one :class:`Settings`: flag store and source, backends,
observers (metrics, tracing, fleet signals, shadow traffic, exposures) and the :class:`Router`.

Shared by the two hosts of the request path, so they cannot drift apart: the sidecar's gRPC server
(:mod:`sidecar.server`, which adds the listener, health and drain) and the in-process client
(:mod:`inproc`, which an app calls without a hop). Both build a :class:`RequestPath`, start it,
refresh readiness off the request path, and close it.

Decisions made here and nowhere else: which backend, which observers watch the request path
(tracing only when spans go somewhere), and the fail-safe policy for models without a flag
(``--stable`` pins, ``--unflagged``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from flags.redis_keys import RedisKeys
from flags.sources import FileFlagSource, FlagSource, RedisFlagSource
from flags.store import FlagStore
from sidecar.backends.base import InferenceBackend
from sidecar.circuit import CircuitBreaker
from sidecar.events import EventRecording
from sidecar.fallback import FallbackPolicy
from sidecar.metrics import MetricsObserver, SidecarMetrics
from sidecar.observers import FallbackLog, Observer, Observers, TraceContextPassthrough
from sidecar.plan import UnflaggedPolicy
from sidecar.readiness import VersionReadiness, flag_targets
from sidecar.retry_budget import RetryBudget
from sidecar.routing import Router
from sidecar.settings import Settings
from sidecar.shadow import ShadowMetrics, ShadowObserver
from sidecar.signal_recorder import SignalRecorder, build_signal_recorder
from sidecar.telemetry import build_tracer_provider, tracing_enabled
from sidecar.tracing import TracingObserver


def build_backend(settings: Settings) -> InferenceBackend:
    if settings.triton_url:
        from sidecar.backends.triton import TritonBackend

        return TritonBackend(settings.triton_url, max_message_bytes=settings.max_message_bytes)
    from sidecar.backends.onnx_embedded import OnnxEmbeddedBackend

    return OnnxEmbeddedBackend(
        settings.model_repository, max_batch_delay_s=settings.batch_delay_ms / 1000
    )


def build_named_backends(settings: Settings) -> dict[str, InferenceBackend]:
    """The ``--backend NAME=HOST:PORT`` backends (Triton servers) flag targets may name."""
    from sidecar.backends.triton import TritonBackend

    return {
        name: TritonBackend(address, max_message_bytes=settings.max_message_bytes)
        for name, address in settings.named_backends().items()
    }


def build_source(settings: Settings, store: FlagStore) -> FlagSource:
    if settings.redis_url:
        return RedisFlagSource(settings.redis_url, store, keys=RedisKeys(settings.redis_prefix))
    return FileFlagSource(settings.flags_file, store)


def build_observers(
    metrics: SidecarMetrics,
    tracer_provider: TracerProvider,
    *,
    tracing: bool,
    trace_user_id: bool,
    signals: SignalRecorder | None = None,
    extra: tuple[Observer, ...] = (),
    span_kind: SpanKind = SpanKind.SERVER,
) -> Observer:
    """``span_kind``: the request span's kind, SERVER in the sidecar, INTERNAL in an app."""
    observers: list[Observer] = [MetricsObserver(metrics), FallbackLog(), *extra]
    observers += [signals] if signals is not None else []  # fleet-wide signals (docs/rollouts.md)
    if tracing:
        observers.append(
            TracingObserver(
                tracer_provider.get_tracer("trafficsplit.sidecar"),
                trace_user_id=trace_user_id,
                kind=span_kind,
            )
        )
    else:  # no spans at all: the caller's trace context is passed through as it came
        observers.append(TraceContextPassthrough())
    return Observers(observers)


@dataclass
class RequestPath:
    """Everything one request touches, and the background work that feeds and drains it."""

    settings: Settings
    store: FlagStore
    source: FlagSource
    backend: InferenceBackend
    router: Router
    tracer_provider: TracerProvider
    metrics: SidecarMetrics
    readiness: VersionReadiness
    events: EventRecording
    signals: SignalRecorder | None  # flushes per-version signals to Redis while running
    shadow: ShadowObserver

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        backend: InferenceBackend | None = None,
        tracer_provider: TracerProvider | None = None,
        registry: CollectorRegistry | None = None,
        span_kind: SpanKind = SpanKind.SERVER,
        tracing: bool | None = None,
    ) -> RequestPath:
        """Tracing is on when ``tracer_provider`` is given or the ``OTEL_*`` variables export
        spans, unless ``tracing`` says otherwise; metrics go to ``registry`` (a new one by
        default)."""
        if tracing is None:
            tracing = tracer_provider is not None or tracing_enabled()
        store = FlagStore(snapshot_file=settings.snapshot_file)
        provider = tracer_provider or build_tracer_provider()
        backend = backend or build_backend(settings)
        metrics = SidecarMetrics(registry)
        metrics.watch_store(store)
        breaker = CircuitBreaker(
            threshold=settings.breaker_threshold,
            cool_down_s=settings.breaker_cool_down_s,
            max_open_s=settings.breaker_max_open_s,
        )
        metrics.watch_breaker(breaker)
        readiness = VersionReadiness()
        metrics.watch_readiness(readiness.unready, readiness.known)
        events = EventRecording.build(settings, store)  # exposures and Track (sidecar.events)
        events.watch(metrics.registry)
        signals = build_signal_recorder(settings, metrics)
        shadow = ShadowObserver(
            store,
            backend,
            ShadowMetrics(metrics.registry),
            recorder=signals,
            timeout_s=settings.shadow_timeout_s,
        )
        observer = build_observers(
            metrics,
            provider,
            tracing=tracing,
            trace_user_id=settings.trace_user_id,
            signals=signals,
            extra=(shadow, *events.observers),
            span_kind=span_kind,
        )
        router = Router(
            store,
            backend,
            named_backends=build_named_backends(settings),
            observer=observer,
            budget=RetryBudget(
                ratio=settings.retry_budget_ratio, min_per_s=settings.retry_budget_min_per_s
            ),
            breaker=breaker,
            policy=FallbackPolicy(attempt_share=settings.attempt_share),
            readiness=readiness,
            unflagged=UnflaggedPolicy(
                stable=settings.stable_versions(),
                passthrough=settings.unflagged == "passthrough",
            ),
            default_timeout_s=settings.default_timeout_s,
            max_in_flight=settings.max_in_flight,
        )
        source = build_source(settings, store)
        return cls(
            settings, store, source, backend, router, provider, metrics, readiness, events,
            signals, shadow,
        )  # fmt: skip

    async def start(self) -> None:
        """Open the backends, load the flags (bootstrap file, then the source) and start the
        flush tasks (exposures, signals) on the running event loop."""
        await self.backend.start()
        for named in self.router.backends.values():
            if named is not self.backend:
                await named.start()  # lazy channels: a named backend may come up later
        if self.settings.bootstrap_flags is not None:
            FileFlagSource(self.settings.bootstrap_flags, self.store).reload()
            self.store.mark_stale(f"serving bootstrap flags from {self.settings.bootstrap_flags}")
        await self.source.start()
        await self.events.start()
        if self.signals is not None:
            self.signals.start()

    async def refresh_readiness(self) -> Mapping[str, str]:
        """Check every version a flag routes to on its backend (off the request path); a
        version ready again gets its circuit closed at once. Returns the unready ones."""
        return await self.readiness.refresh(
            self.router.backends,
            flag_targets(self.store.snapshot, self.settings.stable_versions()),
            on_ready_again=self.router.breaker.reset,
        )

    async def close(self, *, shutdown_tracer: bool = True) -> None:
        """After the last request: flush what is buffered, then close every connection.
        ``shutdown_tracer=False`` leaves a provider the host owns (an app's) running."""
        await self.shadow.close()  # before the backends close under its calls
        if self.signals is not None:  # after the last request: its second is flushed too
            await self.signals.close()
        await self.source.close()
        await self.events.close()  # writes what is buffered
        for backend in self.router.backends.values():
            await backend.close()
        if shutdown_tracer:
            self.tracer_provider.shutdown()
