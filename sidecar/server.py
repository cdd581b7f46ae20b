"""The composition root: the request path (:mod:`sidecar.assembly`, shared with the in-process
client) behind a gRPC server, built from one :class:`Settings` and run. Nothing here runs at
import time.

Decided here: whether requests are forwarded as raw bytes (backends that accept them: Triton) or
parsed (the embedded engine); health, reflection, ``/metrics`` and the drain on shutdown. Which
backend, which observers and the fail-safe policy are decided in :mod:`sidecar.assembly`.
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

from flags.sources import FlagSource
from flags.store import FlagStore
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2 as pb
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2_grpc as pb_grpc
from sidecar.assembly import RequestPath
from sidecar.backends.base import BackendError, InferenceBackend, RawInferenceBackend
from sidecar.events import EventRecording
from sidecar.interceptor import ErrorInterceptor
from sidecar.kserve_facade import KServeFacade
from sidecar.metrics import SidecarMetrics
from sidecar.native_api import NativeService
from sidecar.plan import target_key
from sidecar.readiness import VersionReadiness, default_targets
from sidecar.routing import Router
from sidecar.settings import Settings
from sidecar.shadow import ShadowObserver
from sidecar.signal_recorder import SignalRecorder
from sidecar.subjects import SubjectRules

log = logging.getLogger("sidecar.server")

KSERVE_SERVICE = kserve.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
NATIVE_SERVICE = pb.DESCRIPTOR.services_by_name["TrafficSplit"].full_name


@dataclass
class Sidecar:
    """A running sidecar: the shared :class:`RequestPath` behind a gRPC server with health,
    reflection and ``/metrics``. ``start()`` returns the bound address; ``stop()`` drains."""

    path: RequestPath
    server: grpc.aio.Server | None = None
    metrics_address: str = ""
    health: health.aio.HealthServicer | None = None
    address: str = ""
    serving: bool = False
    _health_task: asyncio.Task[None] | None = None
    _not_serving_reasons: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        backend: InferenceBackend | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> Sidecar:
        return cls(RequestPath.build(settings, backend=backend, tracer_provider=tracer_provider))

    # The request path's parts, by the names the server (and its tests) always used.
    @property
    def settings(self) -> Settings:
        return self.path.settings

    @property
    def store(self) -> FlagStore:
        return self.path.store

    @property
    def source(self) -> FlagSource:
        return self.path.source

    @property
    def backend(self) -> InferenceBackend:
        return self.path.backend

    @property
    def router(self) -> Router:
        return self.path.router

    @property
    def tracer_provider(self) -> TracerProvider:
        return self.path.tracer_provider

    @property
    def metrics(self) -> SidecarMetrics:
        return self.path.metrics

    @property
    def readiness(self) -> VersionReadiness:
        return self.path.readiness

    @property
    def events(self) -> EventRecording:
        return self.path.events

    @property
    def signals(self) -> SignalRecorder | None:
        return self.path.signals

    @property
    def shadow(self) -> ShadowObserver:
        return self.path.shadow

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
        await self.path.start()
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
        unready = await self.path.refresh_readiness()
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
        await self.path.close()
