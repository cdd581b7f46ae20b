"""The composition root: builds the store, flag source, backend, router, observers and gRPC
server from one :class:`Settings`, and runs them. Nothing here runs at import time.

Decisions made here and nowhere else: which backend, whether requests are forwarded as raw bytes
(backends that accept them: Triton) or parsed (the embedded engine), which observers watch the
request path (tracing only when spans go somewhere), and the fail-safe policy for models without a
flag (``--stable`` pins, ``--unflagged``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider
from tritonclient.grpc import service_pb2 as kserve

from flags.redis_keys import RedisKeys
from flags.sources import FileFlagSource, FlagSource, RedisFlagSource
from flags.store import FlagStore
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2 as pb
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2_grpc as pb_grpc
from sidecar.backends.base import BackendError, InferenceBackend, RawInferenceBackend
from sidecar.circuit import CircuitBreaker
from sidecar.events import EventRecording
from sidecar.fallback import FallbackPolicy
from sidecar.interceptor import ErrorInterceptor
from sidecar.kserve_facade import KServeFacade
from sidecar.metrics import MetricsObserver, SidecarMetrics
from sidecar.native_api import NativeService
from sidecar.observers import FallbackLog, Observer, Observers, TraceContextPassthrough
from sidecar.plan import UnflaggedPolicy, target_key
from sidecar.readiness import VersionReadiness, default_targets, flag_targets
from sidecar.retry_budget import RetryBudget
from sidecar.routing import Router
from sidecar.settings import Settings
from sidecar.shadow import ShadowMetrics, ShadowObserver
from sidecar.signal_recorder import SignalRecorder, build_signal_recorder
from sidecar.subjects import SubjectRules
from sidecar.telemetry import build_tracer_provider, tracing_enabled
from sidecar.tracing import TracingObserver

log = logging.getLogger("sidecar.server")

KSERVE_SERVICE = kserve.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
NATIVE_SERVICE = pb.DESCRIPTOR.services_by_name["TrafficSplit"].full_name


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
) -> Observer:
    observers: list[Observer] = [MetricsObserver(metrics), FallbackLog(), *extra]
    observers += [signals] if signals is not None else []  # fleet-wide signals (docs/rollouts.md)
    if tracing:
        observers.append(
            TracingObserver(
                tracer_provider.get_tracer("trafficsplit.sidecar"), trace_user_id=trace_user_id
            )
        )
    else:  # no spans at all: the caller's trace context is passed through as it came
        observers.append(TraceContextPassthrough())
    return Observers(observers)


@dataclass
class Sidecar:
    """A running sidecar. ``start()`` returns the bound address; ``stop()`` drains gracefully."""

    settings: Settings
    store: FlagStore
    source: FlagSource
    backend: InferenceBackend
    router: Router
    tracer_provider: TracerProvider
    metrics: SidecarMetrics
    readiness: VersionReadiness
    events: EventRecording | None = None
    server: grpc.aio.Server | None = None
    metrics_address: str = ""
    health: health.aio.HealthServicer | None = None
    address: str = ""
    serving: bool = False
    _health_task: asyncio.Task[None] | None = None
    _not_serving_reasons: list[str] = field(default_factory=list)
    signals: SignalRecorder | None = None  # flushes per-version signals to Redis while running
    shadow: ShadowObserver | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        backend: InferenceBackend | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> Sidecar:
        store = FlagStore(snapshot_file=settings.snapshot_file)
        provider = tracer_provider or build_tracer_provider()
        backend = backend or build_backend(settings)
        metrics = SidecarMetrics()
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
            tracing=tracer_provider is not None or tracing_enabled(),
            trace_user_id=settings.trace_user_id,
            signals=signals,
            extra=(shadow, *events.observers),
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
        return cls(
            settings,
            store,
            build_source(settings, store),
            backend,
            router,
            provider,
            metrics,
            readiness,
            events=events,
            signals=signals,
            shadow=shadow,
        )

    def _rules(self) -> SubjectRules:
        s = self.settings
        return SubjectRules(
            user_id_header=s.user_id_header.lower(),
            attribute_prefix=s.attribute_prefix.lower(),
            allow_anonymous=s.allow_anonymous,
            max_user_id_length=s.max_user_id_length,
            max_attributes=s.max_attributes,
            max_attribute_length=s.max_attribute_length,
        )

    async def start(self) -> str:
        await self.backend.start()
        for named in self.router.backends.values():
            if named is not self.backend:
                await named.start()  # lazy channels: a named backend may come up later
        if self.settings.bootstrap_flags is not None:
            FileFlagSource(self.settings.bootstrap_flags, self.store).reload()
            self.store.mark_stale(f"serving bootstrap flags from {self.settings.bootstrap_flags}")
        await self.source.start()
        if self.events is not None:
            await self.events.start()
        if self.signals is not None:
            self.signals.start()
        limit = self.settings.max_message_bytes
        server = grpc.aio.server(
            interceptors=(ErrorInterceptor(self._count_error),),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        rules = self._rules()
        facade = KServeFacade(
            self.router,
            self.store,
            rules,
            # Decided here, once: a runtime-checkable isinstance costs microseconds per request.
            forward_raw=isinstance(self.backend, RawInferenceBackend),
            serving=lambda: self.serving,
        )
        server.add_generic_rpc_handlers((facade.handler(),))
        native = NativeService(self.router, rules, self.events)
        pb_grpc.add_TrafficSplitServicer_to_server(native, server)  # type: ignore[no-untyped-call]
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (KSERVE_SERVICE, NATIVE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        port = server.add_insecure_port(self.settings.listen)
        if port == 0:
            raise OSError(f"cannot listen on {self.settings.listen}")
        host = self.settings.listen.rsplit(":", 1)[0]
        self.address = f"{host}:{port}"
        await server.start()
        self.server = server
        if self.settings.metrics_listen:
            port = self.metrics.serve(self.settings.metrics_listen)
            self.metrics_address = f"{self.settings.metrics_listen.rpartition(':')[0]}:{port}"
        await self._update_health()
        self._health_task = asyncio.create_task(self._watch_health(), name="sidecar-health")
        log.info(
            "listening on %s (backend %s, flags from %s)",
            self.address,
            self.backend.name,
            self.source.description,
        )
        return self.address

    def _count_error(self, method: str, status: str) -> None:
        self.metrics.errors.labels(method, status).inc()

    async def _update_health(self) -> bool:
        """Check the backend and every flagged version; publish SERVING or NOT_SERVING."""
        reasons: list[str] = []
        try:
            backend_ready = await self.backend.server_ready()
        except BackendError:
            backend_ready = False
        if not backend_ready:
            reasons.append(f"backend {self.backend.name} not ready")
        snapshot = self.store.snapshot
        unready = await self.readiness.refresh(
            self.router.backends,
            flag_targets(snapshot, self.settings.stable_versions()),
            on_ready_again=self.router.breaker.reset,
        )
        has_routes = (
            len(snapshot) > 0  # an invalid document alone loads nothing
            or bool(self.settings.stable)
            or self.settings.unflagged == "passthrough"
        )
        if not has_routes:
            reasons.append("no flags loaded and no --stable version configured")
        if self.settings.require_default_ready:
            keys = (target_key(*t) for t in default_targets(snapshot))
            missing = [key for key in keys if key in unready]
            if missing:
                reasons.append(f"default versions not ready: {', '.join(sorted(missing))}")
        serving = not reasons
        if reasons != self._not_serving_reasons:
            if reasons:
                log.warning("NOT_SERVING: %s", "; ".join(reasons))
            elif self._not_serving_reasons:
                log.info("SERVING again")
            self._not_serving_reasons = reasons
        await self._publish(serving)
        return serving

    async def _publish(self, serving: bool) -> None:
        self.serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        assert self.health is not None
        for service in ("", KSERVE_SERVICE, NATIVE_SERVICE):
            await self.health.set(service, status)

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(self.settings.readiness_interval_s)
            try:
                await self._update_health()
            except Exception:  # a bug here must not stop health updates for good
                log.exception("health check failed")

    async def wait_until_serving(self, timeout: float) -> bool:
        async with asyncio.timeout(timeout):
            while not await self._update_health():
                await asyncio.sleep(0.05)
        return True

    async def stop(self, grace: float | None = None, *, drain_delay: float | None = None) -> None:
        """Health NOT_SERVING first, keep serving for the drain delay (load balancers and
        Kubernetes need that long to stop sending), then stop accepting, finish in-flight work
        within the grace period, and close."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self.health is not None:
            self.serving = False
            await self.health.enter_graceful_shutdown()
        delay = self.settings.drain_delay_s if drain_delay is None else drain_delay
        if self.server is not None and delay > 0:
            log.info("draining: NOT_SERVING, still accepting for %.1fs", delay)
            await asyncio.sleep(delay)  # not synchronisation: the documented drain window
        if self.server is not None:
            await self.server.stop(self.settings.grace_s if grace is None else grace)
        if self.shadow is not None:  # before the backend closes under its calls
            await self.shadow.close()
        if self.signals is not None:  # after the last request: its second is flushed too
            await self.signals.close()
        await self.source.close()
        if self.events is not None:
            await self.events.close()  # writes what is buffered
        for backend in self.router.backends.values():
            await backend.close()
        self.tracer_provider.shutdown()
