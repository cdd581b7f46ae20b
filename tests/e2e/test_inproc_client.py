"""The in-process client against a real tritonserver and redis-server, beside a real sidecar.

Same flag in Redis, same users: the client and the sidecar must agree on every variant and
served version; a missing candidate falls back; metrics, spans, signal windows and exposures are
recorded; a flag change in Redis reaches the client while it runs.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from servers import RedisServer
from support import ROOT, digits_flag, scrape
from support_events import experiment_flag
from triton_harness import TritonServer

from experiments.events.sinks import EventKeys
from flags.admin import FlagAdmin
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from flags.schema import parse_flag
from inproc import BackendFailure, InProcessClient, InvalidInput
from sidecar.launcher import SidecarProcess
from sidecar.outcome import FallbackCause
from sidecar.plan import Membership
from signals.redis_window import read_window_sync

pytestmark = [pytest.mark.redis, pytest.mark.triton]

PIXELS = np.load(ROOT / "triton_models" / "digits" / "golden.npz")["pixels"].astype(np.float32)
USERS = [f"user-{i}" for i in range(40)]


def apply(redis: RedisServer, prefix: str, doc: dict[str, Any]) -> FlagAdmin:
    admin = FlagAdmin(sync_client(redis.url), keys=RedisKeys(prefix), actor="inproc-e2e")
    admin.apply(parse_flag(doc), reason="inproc e2e", force=True)
    return admin


async def until(condition: Callable[[], Awaitable[bool]], *, timeout: float, what: str) -> None:
    """Poll an async condition with a deadline (no fixed sleeps as synchronisation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {timeout} s: {what}")


def sidecar_answers(address: str, users: list[tuple[str, dict[str, str]]]) -> list[tuple[Any, ...]]:
    client = triton.InferenceServerClient(address)
    out = []
    try:
        for user, attributes in users:
            tensor = triton.InferInput("pixels", [1, 64], "FP32")
            tensor.set_data_from_numpy(PIXELS[:1])
            headers = {"x-user-id": user, **{f"x-attr-{k}": v for k, v in attributes.items()}}
            result = client.infer("digits", [tensor], headers=headers)
            response = result.get_response()
            out.append((response.parameters["trafficsplit.variant"].string_param,
                        response.model_version, int(result.as_numpy("label")[0][0])))  # fmt: skip
    finally:
        client.close()
    return out


def test_same_variants_and_versions_as_the_sidecar(
    redis_server: RedisServer, triton_server: TritonServer, prefix: str, tmp_path: Path
) -> None:
    apply(redis_server, prefix, digits_flag(shadow=None))
    users = [(u, {}) for u in USERS] + [
        ("alice@example.com", {}),  # allow-listed
        ("user-ent", {"tier": "enterprise", "tenure_days": "40"}),  # attribute rule
    ]
    args = ["--redis-url", redis_server.url, "--redis-prefix", prefix,
            "--triton-url", triton_server.grpc_url]  # fmt: skip
    with SidecarProcess(args, stderr_path=tmp_path / "sidecar.log") as sidecar:
        expected = sidecar_answers(sidecar.address, users)

    async def scenario() -> list[tuple[Any, ...]]:
        async with InProcessClient.from_settings(
            redis_url=redis_server.url, redis_prefix=prefix, triton_url=triton_server.grpc_url
        ) as client:
            out = []
            for user, attributes in users:
                typed = {"tier": "enterprise", "tenure_days": 40} if attributes else None
                r = await client.infer("digits", {"pixels": PIXELS[:1]}, user_id=user,
                                       attributes=typed, timeout=10)  # fmt: skip
                out.append((r.variant, r.model_version, int(r.outputs["label"][0][0])))
            return out

    got = asyncio.run(scenario())
    assert got == expected
    assert {v for v, *_ in got} == {"control", "candidate"}
    assert got[-2][:2] == got[-1][:2] == ("candidate", "2")


def test_a_missing_candidate_falls_back_and_is_then_skipped_as_not_ready(
    redis_server: RedisServer, triton_v1_only: TritonServer, prefix: str
) -> None:
    apply(redis_server, prefix, digits_flag(rules=[], shadow=None,
                                            allocation={"split": {"control": 50, "candidate": 50}}))  # fmt: skip

    async def scenario() -> None:
        async with InProcessClient.from_settings(
            redis_url=redis_server.url, redis_prefix=prefix, triton_url=triton_v1_only.grpc_url,
            readiness_interval_s=3600,  # checked below, when the test says so
        ) as client:  # fmt: skip
            await client.refresh_readiness()  # what the background task does
            results = [
                await client.infer("digits", {"pixels": PIXELS[:1]}, user_id=u) for u in USERS
            ]
            candidates = [r for r in results if r.variant == "candidate"]
            assert candidates and len(candidates) < len(results)
            assert {r.model_version for r in results} == {"1"}  # every request answered by v1
            assert {r.assignment.fallback for r in candidates} == {FallbackCause.NOT_READY}
            assert {r.assignment.fallback for r in results if r.variant == "control"} == {None}
            unready = await client.refresh_readiness()
            assert list(unready) == ["digits:2"] and "digits" in unready["digits:2"]

            triton_v1_only.kill()  # now nothing can answer: a clear error, no traceback
            with pytest.raises(BackendFailure) as caught:
                await client.infer("digits", {"pixels": PIXELS[:1]}, user_id="user-1", timeout=2)
            assert caught.value.code in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )

    asyncio.run(scenario())


def test_a_failing_candidate_falls_back_on_error_before_readiness_knows(
    redis_server: RedisServer, triton_v1_only: TritonServer, prefix: str
) -> None:
    apply(redis_server, prefix, digits_flag(rules=[], shadow=None,
                                            allocation={"split": {"control": 0, "candidate": 100}}))  # fmt: skip

    async def scenario() -> None:
        async with InProcessClient.from_settings(
            redis_url=redis_server.url, redis_prefix=prefix, triton_url=triton_v1_only.grpc_url,
            readiness_interval_s=3600, breaker_threshold=1000,
        ) as client:  # fmt: skip
            # The first readiness check may race these calls: either cause is a fallback to v1.
            r = await client.infer("digits", {"pixels": PIXELS[:1]}, user_id="u1", timeout=5)
            assert (r.variant, r.model_version) == ("candidate", "1")
            assert r.assignment.fallback in (FallbackCause.ERROR, FallbackCause.NOT_READY)

    asyncio.run(scenario())


def test_metrics_spans_windows_and_exposures_are_recorded(
    redis_server: RedisServer, triton_server: TritonServer, tmp_path: Path
) -> None:
    prefix = f"inproc-{uuid.uuid4().hex[:8]}:"
    apply(redis_server, prefix, experiment_flag(candidate=50))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    start = int(time.time())

    async def scenario() -> None:
        async with InProcessClient.from_settings(
            redis_url=redis_server.url, redis_prefix=prefix, triton_url=triton_server.grpc_url,
            signals_interval_s=3600,  # flushed once, by close()
            metrics_listen="127.0.0.1:0", registry=registry, tracer_provider=provider,
        ) as client:  # fmt: skip
            with provider.get_tracer("app").start_as_current_span("app handler"):
                for user in USERS[:20]:
                    await client.infer("digits", {"pixels": PIXELS[:1]}, user_id=user)
            with pytest.raises(InvalidInput):  # refused before routing: no span, no count
                await client.infer("digits", {"pixels": PIXELS[:1].tolist()}, user_id="u")  # type: ignore[dict-item]
            addresses.append(client.metrics_address)
            page = scrape(f"http://{client.metrics_address}/metrics")
            served = sum(v for (name, labels), v in page.items()
                         if name == "trafficsplit_requests_total"
                         and dict(labels)["membership"] == "exposed")  # fmt: skip
            assert served == 20

    addresses: list[str] = []
    asyncio.run(scenario())
    end = int(time.time()) + 1
    with pytest.raises(OSError):  # close() stopped the /metrics listener
        urlopen(f"http://{addresses[0]}/metrics", timeout=2)

    def attempts_ok(version: str) -> float:  # the app's own registry has the same series
        labels = {"flag": "digits", "membership": "exposed", "backend": "triton",
                  "model": "digits", "version": version, "result": "OK"}  # fmt: skip
        return registry.get_sample_value("trafficsplit_attempts_total", labels) or 0.0

    by_version = {v: attempts_ok(v) for v in ("1", "2")}
    assert by_version["1"] + by_version["2"] == 20 and min(by_version.values()) > 0

    spans = exporter.get_finished_spans()
    app = next(s for s in spans if s.name == "app handler")
    requests_spans = [s for s in spans if s.name == "InProcessInfer digits"]
    clients = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert len(requests_spans) == len(clients) == 20
    for span in requests_spans:
        assert span.kind is SpanKind.INTERNAL
        assert span.parent is not None and span.parent.span_id == app.context.span_id
        attributes = dict(span.attributes or {})
        assert attributes["feature_flag.key"] == "digits"
        assert attributes["trafficsplit.cohort"] in ("control", "candidate")
        assert attributes["ml.model.version"] in ("1", "2")
        assert attributes["trafficsplit.membership"] == str(Membership.EXPOSED)
    assert {c.parent.span_id for c in clients if c.parent} == {
        s.context.span_id for s in requests_spans
    }

    window = read_window_sync(redis_server.client(), prefix, "digits", start, end)
    v1, v2 = (window.version("digits", "digits", v) for v in ("1", "2"))
    assert (v1.attempts, v2.attempts) == (by_version["1"], by_version["2"])
    assert v1.failures == v2.failures == 0
    exposures = redis_server.client().xlen(EventKeys(prefix).exposures)
    assert exposures == 20  # one per exposed user, flushed by close()


def test_a_flag_change_in_redis_reaches_the_running_client(
    redis_server: RedisServer, triton_server: TritonServer, prefix: str
) -> None:
    doc = digits_flag(rules=[], shadow=None, allocation={"split": {"control": 100, "candidate": 0}})
    admin = apply(redis_server, prefix, doc)

    async def scenario() -> None:
        async with InProcessClient.from_settings(
            redis_url=redis_server.url, redis_prefix=prefix, triton_url=triton_server.grpc_url
        ) as client:
            r = await client.infer("digits", {"pixels": PIXELS[:1]}, user_id="user-7")
            assert (r.variant, r.model_version) == ("control", "1")
            doc["allocation"] = {"split": {"control": 0, "candidate": 100}}
            admin.apply(parse_flag(doc), reason="ramp to 100", force=True)

            async def on_candidate() -> bool:
                return client.assign("digits", user_id="user-7").variant == "candidate"

            await until(on_candidate, timeout=5, what="the ramp reached the client")
            r = await client.infer("digits", {"pixels": PIXELS[:1]}, user_id="user-7")
            assert (r.variant, r.model_version, r.assignment.fallback) == ("candidate", "2", None)

            # A hand-written SET (no announcement) is caught by the reconcile loop.
            raw = sync_client(redis_server.url)
            key = RedisKeys(prefix).flag("digits")
            stored = raw.get(key)
            assert isinstance(stored, bytes)
            raw.set(key, json.dumps({**json.loads(stored), "enabled": False}))

            async def off() -> bool:
                return client.assign("digits", user_id="user-7").reason == "DISABLED"

            await until(off, timeout=5, what="the raw SET reached the client")

    asyncio.run(scenario())
