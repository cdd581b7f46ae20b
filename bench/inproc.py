"""The in-process client in the ``latency`` and ``hop`` parts: Python apps that skip the hop.

Three asyncio paths to the same Triton, measured in the caller's event loop:

* ``Triton direct (asyncio)``: ``tritonclient.grpc.aio`` asking for the version the flag picks for
  the user, both outputs decoded with ``as_numpy``: the baseline;
* ``in-process client``: :class:`inproc.InProcessClient` (flags from Redis, routing, fallback
  armed), a tracer whose sampler drops every span (``ALWAYS_OFF``, what
  ``OTEL_TRACES_SAMPLER=always_off`` installs), recording on: Prometheus series, per-second signal
  windows flushed to Redis, exposures (the bench flag has an experiment section);
* ``in-process client, spans exported``: the same with every span sampled and handed to a real
  ``BatchSpanProcessor`` in front of an exporter that drops them (the export cost without a
  collector's network).

The sidecar rows of each part use the same flag, so their recording is the same.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from bench.common import drive
from bench.servers import DIGITS_FLAG, PREFIX
from flags.compiled import CompiledFlag
from flags.evaluation import Subject
from flags.schema import parse_flag
from flags.snapshot import Snapshot, evaluate
from inproc import InProcessClient

DIRECT_AIO = "Triton direct (asyncio)"
INPROC = "in-process client"
INPROC_SPANS = "in-process client, spans exported"
PATHS = (DIRECT_AIO, INPROC, INPROC_SPANS)

Call = Callable[[int], Awaitable[object]]


def bench_flag() -> dict[str, Any]:
    """The demo flag with its experiment section (one is added if it has none), so exposures are
    recorded on every path of the parts that measure the in-process client, sidecars included
    (the other serving parts load the flag without it)."""
    doc: dict[str, Any] = json.loads(DIGITS_FLAG.read_text())
    doc.setdefault(
        "experiment",
        {"metrics": [{"name": "correct", "type": "binary"}], "primary_metric": "correct"},
    )
    return doc


def flag_versions(users: Sequence[str]) -> list[str]:
    """The version the bench flag assigns each user: what the direct path asks Triton for."""
    snapshot = Snapshot({"digits": CompiledFlag(parse_flag(bench_flag()))})
    versions = []
    for uid in users:
        target = evaluate(snapshot, "digits", Subject(uid)).target
        assert target is not None
        versions.append(target.version)
    return versions


class _DropSpans(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _provider(export: bool) -> TracerProvider:
    if not export:
        return TracerProvider(sampler=ALWAYS_OFF)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_DropSpans()))
    return provider


@asynccontextmanager
async def open_call(
    path: str, *, triton_url: str, redis_url: str, users: Sequence[str], x: Any
) -> AsyncIterator[Call]:
    """Request ``i`` (user ``users[i % n]``) on ``path``, open for the duration."""
    if path == DIRECT_AIO:
        client = triton_aio.InferenceServerClient(triton_url)
        inputs = [triton_grpc.InferInput("pixels", list(x.shape), "FP32")]
        inputs[0].set_data_from_numpy(x)
        versions = flag_versions(users)

        async def direct(i: int) -> object:
            result = await client.infer("digits", inputs, model_version=versions[i % len(versions)])
            return result.as_numpy("label"), result.as_numpy("probabilities")

        try:
            yield direct
        finally:
            await client.close()
        return
    provider = _provider(export=path == INPROC_SPANS)
    async with InProcessClient.from_settings(
        redis_url=redis_url, redis_prefix=PREFIX, triton_url=triton_url, tracer_provider=provider
    ) as inproc:
        tensors = {"pixels": x}

        async def routed(i: int) -> object:
            return await inproc.infer("digits", tensors, user_id=users[i % len(users)])

        if inproc.assign("digits", user_id=users[0]).flag != "digits":
            raise RuntimeError("the in-process client has no digits flag from Redis")
        try:
            yield routed
        finally:
            provider.shutdown()


async def latencies(total: int, warmup: int, **open_args: Any) -> dict[str, list[float]]:
    """Concurrency 1 on every path at once, interleaved request by request (the order rotating),
    so the machine's noise (other processes, Triton's own jitter) falls on all of them alike and
    the difference of their p50s is the client's cost, not the minute's."""
    async with AsyncExitStack() as stack:
        calls = {p: await stack.enter_async_context(open_call(p, **open_args)) for p in PATHS}
        for i in range(warmup):
            for call in calls.values():
                await call(i)
        out: dict[str, list[float]] = {p: [] for p in PATHS}
        for i in range(total):
            k = i % len(PATHS)
            for path in PATHS[k:] + PATHS[:k]:
                started = time.perf_counter()
                await calls[path](i)
                out[path].append(time.perf_counter() - started)
        return out


async def throughput(
    path: str, total: int, limit_s: float, concurrency: int, **open_args: Any
) -> tuple[int, float]:
    """``total`` requests from ``concurrency`` tasks, or fewer if ``limit_s`` runs out."""
    async with open_call(path, **open_args) as call:
        return await drive(call, total, limit_s, concurrency)


def pixels() -> Any:
    return np.linspace(0, 16, 64, dtype=np.float32).reshape(1, 64)
