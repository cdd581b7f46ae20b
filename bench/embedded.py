"""Part 5, the embedded backend: ``OnnxEmbeddedBackend`` per model version, with and without batching.

Baseline: a bare ``InferenceSession.run`` on the same 1x64 input in a loop (what the engine costs
with no request handling at all). Then the backend's ``infer`` at concurrency 1 and 16 (asyncio
tasks on one event loop, as the sidecar runs it), unbatched (``max_batch_delay_s=0``) and batched
(``max_batch_delay_s`` 0.5 ms and 2 ms). CPU always; CUDA and TensorRT too where onnxruntime really enables
them (a GPU machine).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tritonclient.grpc import service_pb2 as kserve

from bench.common import ROOT
from bench.report import Metric, PartReport, percentile
from sidecar.backends.onnx_embedded import OnnxEmbeddedBackend

REPOSITORY = ROOT / "triton_models"
MODEL = "digits"
VERSIONS = ("1", "2")
BATCH_DELAYS_S = (0.0005, 0.002)  # Triton's digits config uses 500 µs
PROVIDER_SHORT = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "tensorrt",
}


def usable_providers() -> list[str]:
    """CPU, plus CUDA/TensorRT when a session on them really runs there (not a silent fallback)."""
    usable = ["CPUExecutionProvider"]
    if not Path("/dev/nvidiactl").exists():
        return usable  # no NVIDIA driver: skip the probe and onnxruntime's loud fallback
    model = REPOSITORY / MODEL / "1" / "model.onnx"
    for provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        if provider not in ort.get_available_providers():
            continue
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3  # the fallback warning is expected on a CPU machine
            session = ort.InferenceSession(str(model), options, providers=[provider])
        except Exception:
            continue
        if session.get_providers()[0] == provider:
            usable.append(provider)
    return usable


def make_request(version: str, pixels: np.ndarray[Any, Any]) -> kserve.ModelInferRequest:
    request = kserve.ModelInferRequest(model_name=MODEL, model_version=version)
    tensor = request.inputs.add(name="pixels", datatype="FP32")
    tensor.shape.extend(pixels.shape)
    request.raw_input_contents.append(pixels.tobytes())
    return request


@dataclass
class Load:
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


async def drive(
    backend: OnnxEmbeddedBackend, request: kserve.ModelInferRequest, concurrency: int, total: int
) -> Load:
    """``total`` requests from ``concurrency`` tasks; per-request latency in seconds."""
    latencies: list[float] = []
    per_task = max(1, total // concurrency)

    async def worker() -> None:
        for _ in range(per_task):
            start = time.perf_counter()
            await backend.infer(request, timeout=10.0)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Load(len(latencies), time.perf_counter() - start, latencies)


def bare_session(provider: str, version: str, pixels: np.ndarray[Any, Any], total: int) -> Load:
    session = ort.InferenceSession(
        str(REPOSITORY / MODEL / version / "model.onnx"), providers=[provider]
    )
    names = [o.name for o in session.get_outputs()]
    for _ in range(50):
        session.run(names, {"pixels": pixels})
    latencies = []
    start = time.perf_counter()
    for _ in range(total):
        t0 = time.perf_counter()
        session.run(names, {"pixels": pixels})
        latencies.append(time.perf_counter() - t0)
    return Load(total, time.perf_counter() - start, latencies)


def record(part: PartReport, row: str, load: Load) -> None:
    part.add(row, "rps", load.rps)
    part.add(row, "p50_us", percentile(load.latencies, 50) * 1e6)
    part.add(row, "p99_us", percentile(load.latencies, 99) * 1e6)


async def _run(rounds: int, quick: bool, providers: list[str]) -> PartReport:
    part = PartReport(
        name="embedded",
        title="Embedded onnxruntime backend: 1x64 FP32 digits requests, in-process",
        metrics=[
            Metric("rps", "req/s", 0),
            Metric("p50_us", "p50 µs", 0),
            Metric("p99_us", "p99 µs", 0),
            Metric("x_unbatched", "x unbatched req/s", 2),
        ],
    )
    totals = {1: 300 if quick else 1500, 16: 1600 if quick else 8000}
    pixels = np.ascontiguousarray(np.load(REPOSITORY / MODEL / "golden.npz")["pixels"][:1])
    part.params = {
        "rounds": rounds,
        "requests": {f"c{c}": n for c, n in totals.items()},
        "batch_delays_s": list(BATCH_DELAYS_S),
        "providers": providers,
        "onnxruntime": ort.__version__,
    }
    backends: dict[tuple[str, float], OnnxEmbeddedBackend] = {}
    logging.getLogger("sidecar.backends.onnx").setLevel(logging.WARNING)
    try:
        for provider in providers:
            for delay in (0.0, *BATCH_DELAYS_S):
                backend = OnnxEmbeddedBackend(
                    REPOSITORY, providers=[provider], max_batch_delay_s=delay
                )
                await backend.start()
                backends[(provider, delay)] = backend
        requests = {v: make_request(v, pixels) for v in VERSIONS}
        for backend in backends.values():  # warm-up: sessions, pool threads
            for v in VERSIONS:
                await drive(backend, requests[v], 16, 160)
        for _ in range(rounds):
            for provider in providers:
                short = PROVIDER_SHORT[provider]
                for v in VERSIONS:
                    row = f"v{v} {short} bare session.run c1"
                    load = await asyncio.to_thread(bare_session, provider, v, pixels, totals[1])
                    record(part, row, load)
                    for concurrency in (1, 16):
                        unbatched = 0.0
                        for delay in (0.0, *BATCH_DELAYS_S):
                            mode = f"batched {delay * 1e3:g} ms" if delay else "unbatched"
                            row = f"v{v} {short} backend c{concurrency} {mode}"
                            load = await drive(
                                backends[(provider, delay)],
                                requests[v],
                                concurrency,
                                totals[concurrency],
                            )
                            record(part, row, load)
                            unbatched = unbatched or load.rps
                            part.add(row, "x_unbatched", load.rps / unbatched)
    finally:
        for backend in backends.values():
            await backend.close()
    part.notes.append(
        "batched X ms = max_batch_delay_s: concurrent requests for one version share one session "
        "run; at concurrency 1 it only adds the delay"
    )
    return part


def run(*, rounds: int = 5, quick: bool = False) -> PartReport:
    return asyncio.run(_run(rounds, quick, usable_providers()))
