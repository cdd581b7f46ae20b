"""The composition root: builds the store, flag source, backend, router and gRPC server from one
:class:`Settings`, and runs them. Nothing here runs at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

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
from sidecar.backends.base import BackendError, InferenceBackend
from sidecar.kserve_facade import KServeFacade
from sidecar.metrics import SidecarMetrics
from sidecar.native_api import NativeService
from sidecar.retry_budget import RetryBudget
from sidecar.routing import Router
from sidecar.settings import Settings
from sidecar.subjects import SubjectRules
from sidecar.telemetry import build_tracer_provider, tracing_enabled

log = logging.getLogger("sidecar.server")

KSERVE_SERVICE = kserve.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
NATIVE_SERVICE = pb.DESCRIPTOR.services_by_name["TrafficSplit"].full_name
HEALTH_INTERVAL_S = 0.5


def build_backend(settings: Settings) -> InferenceBackend:
    if settings.triton_url:
        from sidecar.backends.triton import TritonBackend

        return TritonBackend(settings.triton_url, max_message_bytes=settings.max_message_bytes)
    from sidecar.backends.onnx_embedded import OnnxEmbeddedBackend

    return OnnxEmbeddedBackend(
        settings.model_repository, max_batch_delay_s=settings.batch_delay_ms / 1000
    )


def build_source(settings: Settings, store: FlagStore) -> FlagSource:
    if settings.redis_url:
        return RedisFlagSource(settings.redis_url, store, keys=RedisKeys(settings.redis_prefix))
    return FileFlagSource(settings.flags_file, store)


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
    server: grpc.aio.Server | None = None
    metrics_address: str = ""
    health: health.aio.HealthServicer | None = None
    address: str = ""
    _health_task: asyncio.Task[None] | None = None

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
        router = Router(
            store,
            backend,
            provider.get_tracer("trafficsplit.sidecar"),
            budget=RetryBudget(
                ratio=settings.retry_budget_ratio, min_per_s=settings.retry_budget_min_per_s
            ),
            metrics=metrics,
            default_timeout_s=settings.default_timeout_s,
            trace_user_id=settings.trace_user_id,
            tracing=tracer_provider is not None or tracing_enabled(),
        )
        return cls(
            settings, store, build_source(settings, store), backend, router, provider, metrics
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
        await self.source.start()
        limit = self.settings.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ]
        )
        rules = self._rules()
        server.add_generic_rpc_handlers((KServeFacade(self.router, self.store, rules).handler(),))
        pb_grpc.add_TrafficSplitServicer_to_server(NativeService(self.router, rules), server)  # type: ignore[no-untyped-call]
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

    async def _update_health(self) -> bool:
        try:
            backend_ready = await self.backend.server_ready()
        except BackendError:
            backend_ready = False
        serving = self.store.health.loaded and backend_ready
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        assert self.health is not None
        for service in ("", KSERVE_SERVICE, NATIVE_SERVICE):
            await self.health.set(service, status)
        return serving

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await self._update_health()

    async def wait_until_serving(self, timeout: float) -> bool:
        async with asyncio.timeout(timeout):
            while not await self._update_health():
                await asyncio.sleep(0.05)
        return True

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING first (load balancers stop sending), then drain, then close."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(self.settings.grace_s if grace is None else grace)
        await self.source.close()
        await self.backend.close()
        self.tracer_provider.shutdown()
