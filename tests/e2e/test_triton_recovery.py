"""TritonBackend readiness detail per version, and recovery after Triton crashes and restarts."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import grpc  # type: ignore[import-untyped, unused-ignore]
import numpy as np
import pytest
from support import make_request
from triton_harness import TritonServer, free_port
from tritonclient.grpc import service_pb2 as kserve
from tritonclient.grpc import service_pb2_grpc

from sidecar.backends.base import BackendError, ErrorKind
from sidecar.backends.triton import TritonBackend

pytestmark = pytest.mark.triton

PIXELS = np.zeros((1, 64), np.float32)
OUTAGE_S = 3.0  # long enough for gRPC's default backoff to have grown past 2 s
RECOVERY_LIMIT_S = 1.5
POLL_S = 0.02


def test_version_states_report_each_target_with_tritons_reason(triton_server: TritonServer) -> None:
    url = triton_server.grpc_url
    targets = [("digits", "1"), ("digits", "2"), ("digits", "3"), ("nope", "1")]

    async def scenario() -> tuple[object, bool]:
        backend = TritonBackend(url)
        await backend.start()
        try:
            return await backend.version_states(targets), await backend.model_ready("digits", "3")
        finally:
            await backend.close()

    states, v3_ready = asyncio.run(scenario())
    assert states == {
        ("digits", "1"): None,
        ("digits", "2"): None,
        ("digits", "3"): f"model 'digits' version '3' is not ready on Triton at {url}: "
        "its repository has versions ['1', '2'] of 'digits'",
        ("nope", "1"): f"model 'nope' version '1' is not ready on Triton at {url}: "
        "no model 'nope' in its repository",
    }
    assert v3_ready is False


def test_version_states_of_an_unreachable_triton_are_reasons_not_errors() -> None:
    url = f"127.0.0.1:{free_port()}"  # nobody listens there

    async def scenario() -> object:
        backend = TritonBackend(url)
        before_start = await backend.version_states([("digits", "1")])
        await backend.start()
        try:
            return before_start, await backend.version_states([("digits", "1"), ("digits", "2")])
        finally:
            await backend.close()

    before_start, states = asyncio.run(scenario())
    assert before_start == {
        ("digits", "1"): f"backend for Triton at {url} not started (call start() first)"
    }
    assert set(states) == {("digits", "1"), ("digits", "2")}
    for reason in states.values():
        assert reason is not None and f"Triton at {url} is unavailable" in reason


@dataclass
class Outage:
    """What the client side saw while Triton was down and coming back."""

    errors: list[BackendError] = field(default_factory=list)
    ready_at: float | None = None  # a fresh channel first got ServerReady = true
    served_at: float | None = None  # TritonBackend first served an infer


async def fresh_channel_ready(url: str) -> bool:
    """ServerReady on a brand-new channel: no reconnect backoff of its own to wait out."""
    async with grpc.aio.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            response = await stub.ServerReady(kserve.ServerReadyRequest(), timeout=0.25)
        except grpc.aio.AioRpcError:
            return False
        return bool(response.ready)


async def watch_ready(url: str, outage: Outage) -> None:
    while not await fresh_channel_ready(url):
        await asyncio.sleep(POLL_S)
    outage.ready_at = time.monotonic()


async def infer_until_served(backend: TritonBackend, outage: Outage) -> None:
    while True:
        try:
            await backend.infer(make_request(PIXELS, version="1"), timeout=0.5)
        except BackendError as exc:
            outage.errors.append(exc)
            await asyncio.sleep(POLL_S)
        else:
            outage.served_at = time.monotonic()
            return


def test_traffic_resumes_within_a_second_and_a_half_of_triton_ready(
    triton_v1_only: TritonServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Crash Triton, fail for a while, restart it on its port: the backend's channel must not sit
    in a long reconnect backoff once Triton is back (tests/integration/test_reconnect.py shows
    the same without Triton, over an outage long enough for gRPC's default backoff to show)."""
    server, url = triton_v1_only, triton_v1_only.grpc_url
    caplog.set_level(logging.INFO, logger="sidecar.backends.triton")

    async def scenario() -> Outage:
        backend = TritonBackend(url)
        await backend.start()
        try:
            assert await backend.server_ready() is True
            served = await backend.infer(make_request(PIXELS, version="1"), timeout=10)
            assert served.model_version == "1"
            server.kill()
            outage = Outage()
            async with asyncio.timeout(OUTAGE_S + 5):  # Triton is down: every call fails fast
                fail_until = time.monotonic() + OUTAGE_S
                while time.monotonic() < fail_until:
                    with pytest.raises(BackendError) as caught:
                        await backend.infer(make_request(PIXELS, version="1"), timeout=0.5)
                    outage.errors.append(caught.value)
                    await asyncio.sleep(0.05)
            assert await backend.server_ready() is False
            async with asyncio.timeout(120):  # restart (same port) + recovery, bounded
                restart = asyncio.create_task(asyncio.to_thread(server.start))
                await asyncio.gather(watch_ready(url, outage), infer_until_served(backend, outage))
                await restart
            return outage
        finally:
            await backend.close()

    outage = asyncio.run(scenario())
    assert outage.errors and {e.kind for e in outage.errors} == {ErrorKind.UNAVAILABLE}
    assert all(e.fallback_eligible and url in e.message for e in outage.errors)
    assert outage.ready_at is not None and outage.served_at is not None
    recovery_s = outage.served_at - outage.ready_at
    print(f"\ntraffic resumed {recovery_s:.3f} s after Triton was ready")
    assert recovery_s < RECOVERY_LIMIT_S
    transitions = [r.getMessage() for r in caplog.records if r.name == "sidecar.backends.triton"]
    assert any("is not ready" in m for m in transitions), transitions
    assert sum("is not ready" in m for m in transitions) == 1  # logged once, not per probe
