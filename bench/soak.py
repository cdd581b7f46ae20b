"""Part 6, soak: mixed load through one sidecar for a bounded time, with flag changes every 2 s.

Load: 2 tritonclient.aio callers on the KServe facade and 2 native-stub callers, 512 users, in a
thread of their own. Every 2 s the candidate's share moves (1..99 %, via ``FlagAdmin.update`` as
``flagctl ramp`` does). The sidecar's RSS (VmRSS of the process and any children) is sampled
every second; "start"
is the median of the first 3 samples after a warm-up (10 % of the run, at most 30 s), "end" the
median of the last 3. Triton's (server plus python-backend stubs) is shown for reference.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio

from bench.common import BackgroundLoop, process_tree, rss_bytes
from bench.report import Metric, PartReport
from bench.servers import sidecar, stack
from flags.mutations import ramp
from flags.schema import FlagSpec
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2 as pb
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2_grpc as pb_grpc

USERS = [f"user-{i:04d}" for i in range(512)]
SIDECAR, TRITON = "sidecar", "triton (reference)"
CHANGE_EVERY_S = 2.0
SAMPLE_EVERY_S = 1.0


@dataclass
class MixedLoad(BackgroundLoop):
    url: str
    requests: int = 0
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    async def _run(self) -> None:
        x = np.zeros((1, 64), dtype=np.float32)
        client = triton_aio.InferenceServerClient(self.url)
        inputs = [triton_grpc.InferInput("pixels", [1, 64], "FP32")]
        inputs[0].set_data_from_numpy(x)
        headers = [{"x-user-id": uid} for uid in USERS]
        channel = grpc.aio.insecure_channel(self.url)
        stub = pb_grpc.TrafficSplitStub(channel)  # type: ignore[no-untyped-call]
        tensor = pb.Tensor(name="pixels", datatype="FP32", shape=[1, 64], data=x.tobytes())
        native = [
            pb.InferRequest(subject=pb.Subject(id=u), model="digits", inputs=[tensor])
            for u in USERS
        ]

        async def kserve_caller(offset: int) -> None:
            for i in range(offset, 100_000_000, 2):  # bounded; the stop event ends it
                if self.stop.is_set():
                    return
                await self._count(
                    client.infer("digits", inputs, headers=headers[i % 512], client_timeout=10)
                )

        async def native_caller(offset: int) -> None:
            for i in range(offset, 100_000_000, 2):
                if self.stop.is_set():
                    return
                await self._count(stub.Infer(native[i % 512], timeout=10))

        try:
            await asyncio.gather(
                kserve_caller(0), kserve_caller(1), native_caller(0), native_caller(1)
            )
        finally:
            await client.close()
            await channel.close()

    async def _count(self, call: object) -> None:
        try:
            await call  # type: ignore[misc]
        except Exception:
            self.errors += 1
        else:
            self.requests += 1


def _ramp_to(percent: int) -> Callable[[FlagSpec], FlagSpec]:
    def edit(spec: FlagSpec) -> FlagSpec:
        return ramp(spec, "candidate", percent)

    return edit


def run(*, duration_s: float = 600.0) -> PartReport:
    part = PartReport(
        name="soak",
        title=f"Soak: {duration_s:g} s of mixed load, flag change every {CHANGE_EVERY_S:g} s",
        metrics=[
            Metric("rss_start_mb", "RSS start MiB", 1),
            Metric("rss_end_mb", "RSS end MiB", 1),
            Metric("rss_max_mb", "RSS max MiB", 1),
            Metric("growth_pct", "growth %", 2),
            Metric("rps", "req/s", 0),
            Metric("errors", "errors", 0),
            Metric("flag_changes", "flag changes", 0),
        ],
    )
    warmup_s = min(30.0, duration_s * 0.1)
    part.params = {"duration_s": duration_s, "warmup_s": warmup_s, "users": len(USERS)}
    with ExitStack() as exits:
        st = exits.enter_context(stack())
        side = exits.enter_context(sidecar(st.redis.url, st.triton.grpc_url))
        pids = {SIDECAR: side.pid, TRITON: st.triton.pid}
        samples: dict[str, list[tuple[float, int]]] = {row: [] for row in pids}
        load = MixedLoad(side.address)
        ticker = threading.Event()  # never set: its wait() is the sampling timer
        started = time.monotonic()
        load.start()
        exits.callback(load.close)
        changes = 0
        next_change = started + CHANGE_EVERY_S
        for _ in range(int(duration_s / SAMPLE_EVERY_S) + 2):  # bounded by the duration
            now = time.monotonic()
            if now - started >= duration_s:
                break
            for row, pid in pids.items():
                samples[row].append((now - started, sum(rss_bytes(p) for p in process_tree(pid))))
            if now >= next_change:
                st.admin.update(
                    "digits", _ramp_to(1 + (changes * 37) % 99), action="ramp", reason="soak"
                )
                changes += 1
                next_change += CHANGE_EVERY_S
            ticker.wait(SAMPLE_EVERY_S)
        elapsed = time.monotonic() - started
        load.close()
        for row in pids:
            settled = [rss for t, rss in samples[row] if t >= warmup_s] or [samples[row][-1][1]]
            start = statistics.median(settled[:3]) / 2**20
            end = statistics.median(settled[-3:]) / 2**20
            part.add(row, "rss_start_mb", start)
            part.add(row, "rss_end_mb", end)
            part.add(row, "rss_max_mb", max(rss for _, rss in samples[row]) / 2**20)
            part.add(row, "growth_pct", (end - start) / start * 100)
        part.add(SIDECAR, "rps", load.requests / elapsed)
        part.add(SIDECAR, "errors", load.errors)
        part.add(SIDECAR, "flag_changes", changes)
        part.info["rss_samples_mb"] = {
            row: [[round(t, 1), round(rss / 2**20, 2)] for t, rss in points]
            for row, points in samples.items()
        }
    part.target(
        "sidecar RSS growth", abs(part.median(SIDECAR, "growth_pct") or 0.0), "<=", 5.0, " %"
    )
    return part
