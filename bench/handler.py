"""Part ``handler``: the sidecar's own cost per request, in-process, with no network at all.

The KServe facade's ``ModelInfer`` handler (read the routing header, build the subject, plan,
dispatch through the observers, render the assignment) runs against a raw backend stub that
returns a canned Triton reply, so what is timed is exactly what the sidecar adds on top of gRPC
and the backend. Rows:

* ``bare pass-through``: the irreducible work of any routing proxy written the same way (read the
  header off the wire, append a precomputed target, await the backend, append precomputed reply
  parameters): the baseline, measured in the same run;
* ``sidecar, tracing off``: the production path with metrics and the fallback log observers;
* ``sidecar, tracing on``: plus the tracing observer (two spans per request, in-memory exporter).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tritonclient.grpc import service_pb2 as kserve

from bench.report import Metric, PartReport
from bench.servers import DIGITS_FLAG
from flags.store import FlagStore
from sidecar import wire
from sidecar.assembly import build_observers
from sidecar.kserve_facade import KServeFacade
from sidecar.metrics import SidecarMetrics
from sidecar.routing import Router
from sidecar.subjects import SubjectRules

BARE, OFF, ON = "bare pass-through", "sidecar, tracing off", "sidecar, tracing on"


class CannedTriton:
    """A raw backend that answers every request with the same serialized reply."""

    name = "triton"

    def __init__(self) -> None:
        reply = kserve.ModelInferResponse(model_name="digits", model_version="1", id="x")
        out = reply.outputs.add(name="label", datatype="INT64", shape=[1, 1])
        del out
        reply.raw_output_contents.append(b"\x03" + b"\x00" * 7)
        self.reply: bytes = reply.SerializeToString()

    async def infer_raw(self, request: bytes, **_: Any) -> bytes:
        return bytes(self.reply)

    async def infer(self, request: Any, **_: Any) -> Any:
        raise NotImplementedError


class Context:
    def __init__(self, user: str) -> None:
        self._metadata = (("x-user-id", user),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float:
        return 10.0

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass


def request_bytes() -> bytes:
    request = kserve.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="pixels", datatype="FP32")
    tensor.shape.extend([1, 64])
    request.raw_input_contents.append(b"\x00" * 256)
    return bytes(request.SerializeToString())


def sidecar_handler(tracing: bool) -> Callable[[bytes, Context], Awaitable[bytes]]:
    store = FlagStore()
    store.sync({"digits": DIGITS_FLAG.read_text()}, complete=True)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    observer = build_observers(SidecarMetrics(), provider, tracing=tracing, trace_user_id=False)
    router = Router(store, CannedTriton(), observer=observer)  # type: ignore[arg-type]
    facade = KServeFacade(router, store, SubjectRules(), forward_raw=True, serving=lambda: True)
    return facade.ModelInfer


def bare_handler() -> Callable[[bytes, Context], Awaitable[bytes]]:
    backend = CannedTriton()
    suffix = wire.retarget("digits", "1", {}, frozenset())
    params = wire.parameter_entries(wire.RESPONSE_PARAMETERS, {"trafficsplit.variant": "control"})

    async def handle(raw: bytes, context: Context) -> bytes:
        header = wire.read_request_header(raw)
        context.invocation_metadata()
        reply = await backend.infer_raw(raw + suffix, timeout=context.time_remaining())
        del header
        return bytes(reply + params)

    return handle


async def per_request_us(
    handler: Callable[[bytes, Context], Awaitable[bytes]], n: int, contexts: list[Context]
) -> float:
    raw = request_bytes()
    for i in range(200):  # warm-up: caches, label children
        await handler(raw, contexts[i % len(contexts)])
    started = time.perf_counter()
    for i in range(n):
        await handler(raw, contexts[i % len(contexts)])
    return (time.perf_counter() - started) / n * 1e6


def run(rounds: int = 5, requests: int = 20_000) -> PartReport:
    part = PartReport(
        name="handler",
        title="Sidecar's own cost per request (KServe ModelInfer, in-process, canned backend)",
        metrics=[Metric("us", "µs/request", 1), Metric("x_bare", "x bare", 2)],
    )
    part.params = {"rounds": rounds, "requests": requests, "flag": json.loads(
        DIGITS_FLAG.read_text())["key"]}  # fmt: skip
    contexts = [Context(f"user-{i:04d}") for i in range(512)]
    handlers = {BARE: bare_handler(), OFF: sidecar_handler(False), ON: sidecar_handler(True)}

    async def one_round(order: list[str]) -> dict[str, float]:
        return {name: await per_request_us(handlers[name], requests, contexts) for name in order}

    names = list(handlers)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate the order per round
        timings = asyncio.run(one_round(order))
        for name, us in timings.items():
            part.add(name, "us", us)
            part.add(name, "x_bare", us / timings[BARE])
    part.notes.append(
        "x bare: per round, the row's µs over the bare pass-through's µs in the same round."
    )
    return part
