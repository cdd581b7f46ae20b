"""Part: one inference through the sidecar vs direct, on both backends (c=1, p50/p99).

- Triton backend: tritonclient -> Triton, vs tritonclient -> sidecar -> Triton (flags from Redis).
- Embedded backend: ``InferenceSession.run`` in the caller's process (the engine with no server at
  all), vs tritonclient -> sidecar running the same ONNX file with onnxruntime.
- No hop at all: the in-process client (:mod:`bench.inproc`), spans sampled out or all exported,
  vs ``tritonclient.grpc.aio`` -> Triton in the same event loop.

Paths alternate within each round; "added" is p50 minus the direct p50 of the same backend and
round.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton_grpc

from bench import inproc
from bench.common import ROOT
from bench.report import Metric, PartReport, percentile
from bench.servers import stack, wait_ready
from sidecar.launcher import SidecarProcess

USERS = [f"user-{i}" for i in range(1000)]
TRITON_DIRECT = "Triton direct"
TRITON_SIDECAR = "sidecar -> Triton"
ONNX_DIRECT = "onnxruntime in-process"
ONNX_SIDECAR = "sidecar (embedded onnxruntime)"
PATHS = (TRITON_DIRECT, TRITON_SIDECAR, ONNX_DIRECT, ONNX_SIDECAR, inproc.INPROC)
DIRECT_OF = {
    TRITON_SIDECAR: TRITON_DIRECT,
    ONNX_SIDECAR: ONNX_DIRECT,
    inproc.INPROC: inproc.DIRECT_AIO,
    inproc.INPROC_SPANS: inproc.DIRECT_AIO,
}


def _x() -> np.ndarray[Any, Any]:
    golden = np.load(ROOT / "triton_models" / "digits" / "golden.npz")
    return np.ascontiguousarray(golden["pixels"][:1], dtype=np.float32)


def _client_call(
    url: str, *, headers: bool, version: str
) -> tuple[Callable[[int], object], Callable[[], None]]:
    client = triton_grpc.InferenceServerClient(url)
    inputs = [triton_grpc.InferInput("pixels", [1, 64], "FP32")]
    inputs[0].set_data_from_numpy(_x())
    if headers:
        return (
            lambda i: client.infer("digits", inputs, headers={"x-user-id": USERS[i % len(USERS)]})
        ), client.close
    return (lambda i: client.infer("digits", inputs, model_version=version)), client.close


def _session_call() -> tuple[Callable[[int], object], Callable[[], None]]:
    session = ort.InferenceSession(
        str(ROOT / "triton_models" / "digits" / "1" / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    feeds = {"pixels": _x()}
    return (lambda i: session.run(None, feeds)), (lambda: None)


def _latencies(call: Callable[[int], object], total: int) -> list[float]:
    for i in range(max(50, total // 10)):
        call(i)
    out = []
    for i in range(total):
        started = time.perf_counter()
        call(i)
        out.append(time.perf_counter() - started)
    return out


def run(*, rounds: int = 5, requests: int = 2000) -> PartReport:
    part = PartReport(
        name="latency",
        title="One inference through the sidecar vs direct, both backends (c=1)",
        metrics=[
            Metric("p50_us", "p50 µs", 0),
            Metric("p99_us", "p99 µs", 0),
            Metric("added_p50_us", "added p50 µs", 0),
            Metric("added_p99_us", "added p99 µs", 0),
        ],
    )
    part.params = {
        "rounds": rounds,
        "requests": requests,
        "flag": "deploy/flags/digits.json + an experiment section (exposures recorded)",
    }
    with ExitStack() as exits:
        st = exits.enter_context(stack(inproc.bench_flag()))
        via_triton = exits.enter_context(
            SidecarProcess(
                [
                    "--redis-url",
                    st.redis.url,
                    "--redis-prefix",
                    "bench:",
                    "--triton-url",
                    st.triton.grpc_url,
                    "--log-level",
                    "WARNING",
                ]
            )
        )
        embedded = exits.enter_context(
            SidecarProcess(
                ["--redis-url", st.redis.url, "--redis-prefix", "bench:", "--log-level", "WARNING"]
            )
        )
        for address in (via_triton.address, embedded.address):
            wait_ready(address, timeout=30, what="sidecar", headers={"x-user-id": "bench"})
        makers: dict[str, Callable[[], tuple[Callable[[int], object], Callable[[], None]]]] = {
            TRITON_DIRECT: lambda: _client_call(st.triton.grpc_url, headers=False, version="1"),
            TRITON_SIDECAR: lambda: _client_call(via_triton.address, headers=True, version=""),
            ONNX_DIRECT: _session_call,
            ONNX_SIDECAR: lambda: _client_call(embedded.address, headers=True, version=""),
        }
        for r in range(rounds):
            results: dict[str, tuple[float, float]] = {}
            for name in PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]:
                if name == inproc.INPROC:  # asyncio paths, interleaved in one event loop
                    timed = asyncio.run(
                        inproc.latencies(
                            requests, max(50, requests // 10), triton_url=st.triton.grpc_url,
                            redis_url=st.redis.url, users=USERS, x=_x(),
                        )
                    )  # fmt: skip
                    for path, values in timed.items():
                        results[path] = (percentile(values, 50) * 1e6, percentile(values, 99) * 1e6)
                        part.add(path, "p50_us", results[path][0])
                        part.add(path, "p99_us", results[path][1])
                    continue
                call, close = makers[name]()
                try:
                    values = _latencies(call, requests)
                finally:
                    close()
                results[name] = (percentile(values, 50) * 1e6, percentile(values, 99) * 1e6)
                part.add(name, "p50_us", results[name][0])
                part.add(name, "p99_us", results[name][1])
            for name, direct in DIRECT_OF.items():
                part.add(name, "added_p50_us", results[name][0] - results[direct][0])
                part.add(name, "added_p99_us", results[name][1] - results[direct][1])
    part.target(
        "in-process client added p50 (spans sampled out)",
        part.median(inproc.INPROC, "added_p50_us"),
        "<=",
        20.0,
        "µs",
    )
    part.notes.append(
        "Triton direct asks for version 1 explicitly; the sidecars route by the flag "
        "(80 % v1 / 20 % v2); client, servers and Redis share this machine's CPUs"
    )
    part.notes.append(
        "Triton direct (asyncio) asks for the version the flag picks for each user and decodes "
        "both outputs, as the in-process client does; it and the in-process rows run interleaved "
        "request by request in one event loop, and their added p50 is against it"
    )
    return part
