"""TritonBackend's channel reconnects within a second of its server coming back, even after an
outage long enough for gRPC's default backoff (1 s, x1.6, up to 120 s) to wait several seconds.

The server is a real grpc.aio KServe-v2 stand-in on a fixed loopback port, stopped and restarted;
tests/e2e/test_triton_recovery.py does the same with a real tritonserver over a shorter outage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc  # type: ignore[import-untyped, unused-ignore]
from servers import free_port
from tritonclient.grpc import service_pb2 as kserve
from tritonclient.grpc import service_pb2_grpc

from sidecar.backends.base import BackendError, ErrorKind
from sidecar.backends.triton import TritonBackend

# gRPC's defaults attempt reconnection about 5.2, 9.3 and 15.8 s into an outage; a 10 s outage
# measured 4.0 to 6.3 s of extra downtime with them (20 s: 8.0 s), 0.15 s with the capped backoff.
OUTAGE_S = 10.0
RECOVERY_LIMIT_S = 1.0
HEALTH_INTERVAL_S = 0.5  # the server's readiness loop


class StandIn(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    async def ServerReady(self, request: object, context: object) -> kserve.ServerReadyResponse:
        return kserve.ServerReadyResponse(ready=True)

    async def ModelInfer(self, request: object, context: object) -> kserve.ModelInferResponse:
        return kserve.ModelInferResponse(model_name="digits", model_version="1")


async def serve(port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(StandIn(), server)  # type: ignore[no-untyped-call]
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        raise OSError(f"cannot listen on 127.0.0.1:{port} again")
    await server.start()
    return server


async def infer(backend: TritonBackend) -> bool:
    """One request, as traffic would send it: True if served, False on UNAVAILABLE."""
    request = kserve.ModelInferRequest(model_name="digits", model_version="1")
    try:
        await backend.infer(request, timeout=0.5)
    except BackendError as exc:
        assert exc.kind is ErrorKind.UNAVAILABLE, exc
        return False
    return True


async def busy(backend: TritonBackend, back: asyncio.Event) -> float:
    """Requests every 20 ms throughout: seconds from the server's return to the first answer."""
    while not back.is_set():
        assert not await infer(backend)
        await asyncio.sleep(0.02)
    returned = time.monotonic()
    while not await infer(backend):
        await asyncio.sleep(0.02)
    return time.monotonic() - returned


async def idle(backend: TritonBackend, back: asyncio.Event) -> float:
    """No traffic, only the readiness loop's server_ready; then traffic that must be served."""
    while not back.is_set():
        assert not await backend.server_ready()
        await asyncio.sleep(HEALTH_INTERVAL_S)
    returned = time.monotonic()
    while not await backend.server_ready():
        await asyncio.sleep(HEALTH_INTERVAL_S)
    assert await infer(backend)
    return time.monotonic() - returned


Client = Callable[[TritonBackend, asyncio.Event], Awaitable[float]]


def test_busy_and_idle_channels_recover_within_a_second_of_a_long_outage() -> None:
    async def scenario() -> list[float]:
        port = free_port()
        url = f"127.0.0.1:{port}"
        server = await serve(port)
        clients: list[Client] = [busy, idle]
        backends = [TritonBackend(url) for _ in clients]
        try:
            for backend in backends:
                await backend.start()
                assert await infer(backend)
            await server.stop(None)
            back = asyncio.Event()
            async with asyncio.timeout(OUTAGE_S + 10):
                recoveries = asyncio.gather(
                    *(c(b, back) for c, b in zip(clients, backends, strict=True))
                )
                await asyncio.sleep(OUTAGE_S)  # the outage itself, not a synchronisation
                server = await serve(port)
                back.set()
                return list(await recoveries)
        finally:
            for backend in backends:
                await backend.close()
            await server.stop(None)

    busy_s, idle_s = asyncio.run(scenario())
    print(f"\nrecovered after a {OUTAGE_S} s outage: busy {busy_s:.3f} s, idle {idle_s:.3f} s")
    assert busy_s < RECOVERY_LIMIT_S
    assert idle_s < RECOVERY_LIMIT_S + HEALTH_INTERVAL_S  # plus the wait for the next probe
