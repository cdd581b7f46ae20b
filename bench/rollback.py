"""Part 4, rollback: from ``flagctl rollback`` until the last response served by the candidate.

Steady load (4 concurrent tritonclient.aio callers, 512 users, in a thread of its own) goes through
one sidecar to Triton, with the candidate (digits v2) at 50 %. Each round re-enables the flag at
50 %, waits until the candidate is being served again, then runs the rollback on the same code path
as ``flagctl rollback`` (``FlagAdmin.update`` with ``mutations.rollback``) and keeps the load going
for 400 ms more. The last response whose ``model_version`` is the candidate's marks the end.
Requests already in flight at the write still count: an app sees their answers after the rollback.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio

from bench.common import BackgroundLoop
from bench.report import Metric, PartReport
from bench.servers import DIGITS_FLAG, sidecar, stack
from flags import mutations
from flags.schema import FlagSpec

ROW = "sidecar kserve, 4 callers"
USERS = [f"user-{i:04d}" for i in range(512)]
CANDIDATE_VERSION = "2"
CONCURRENCY = 4
OBSERVE_AFTER_S = 0.4  # keep loading this long after the write, so a late candidate shows up


@dataclass
class Load(BackgroundLoop):
    """Responses as (sent, received, served version), perf_counter seconds; run in a thread."""

    url: str
    responses: list[tuple[float, float, str]] = field(default_factory=list)
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    async def _run(self) -> None:
        client = triton_aio.InferenceServerClient(self.url)
        inputs = [triton_grpc.InferInput("pixels", [1, 64], "FP32")]
        inputs[0].set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
        headers = [{"x-user-id": uid} for uid in USERS]

        async def caller(offset: int) -> None:
            i = offset
            for _ in range(10_000_000):  # bounded; the stop event ends it long before
                if self.stop.is_set():
                    return
                sent = time.perf_counter()
                try:
                    result = await client.infer(
                        "digits", inputs, headers=headers[i % len(headers)], client_timeout=10
                    )
                except Exception:
                    self.errors += 1
                    continue
                version = result.get_response().model_version
                self.responses.append((sent, time.perf_counter(), version))
                i += CONCURRENCY

        try:
            await asyncio.gather(*(caller(k) for k in range(CONCURRENCY)))
        finally:
            await client.close()


def wait_for(condition: object, *, timeout: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.001)  # poll interval; the deadline bounds the wait
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def half_and_half(spec: FlagSpec) -> FlagSpec:
    return mutations.ramp(mutations.set_enabled(spec, True), "candidate", 50)


def run(*, rounds: int = 5) -> PartReport:
    part = PartReport(
        name="rollback",
        title="Rollback under load: flagctl rollback -> last candidate response",
        metrics=[
            Metric("last_candidate_ms", "last candidate ms", 1),
            Metric("write_ms", "flagctl write ms", 1),
            Metric("late_candidates", "candidates sent after write", 0),
            Metric("rps", "load req/s", 0),
        ],
    )
    part.params = {"rounds": rounds, "callers": CONCURRENCY, "users": len(USERS)}
    flag = json.loads(DIGITS_FLAG.read_text())
    flag["allocation"]["split"] = {"control": 50, "candidate": 50}
    with ExitStack() as exits:
        st = exits.enter_context(stack(flag))
        side = exits.enter_context(sidecar(st.redis.url, st.triton.grpc_url))
        load = Load(side.address)
        load.start()
        exits.callback(load.close)
        for r in range(rounds):
            if r:
                st.admin.update("digits", half_and_half, action="ramp", reason="bench")
            mark = len(load.responses)
            wait_for(
                lambda m=mark: sum(v == CANDIDATE_VERSION for *_, v in load.responses[m:]) >= 50,
                timeout=10,
                what="the candidate to serve again",
            )
            started = time.perf_counter()
            st.admin.update("digits", mutations.rollback, action="rollback", reason="bench")
            written = time.perf_counter()
            wait_for(
                lambda w=written: load.responses and load.responses[-1][1] > w + OBSERVE_AFTER_S,
                timeout=10,
                what="load to continue after the rollback",
            )
            after = [x for x in load.responses[mark:] if x[1] >= started]
            candidates = [x for x in load.responses[mark:] if x[2] == CANDIDATE_VERSION]
            last = max(received for _, received, _ in candidates)
            part.add(ROW, "last_candidate_ms", max(0.0, last - started) * 1e3)
            part.add(ROW, "write_ms", (written - started) * 1e3)
            part.add(ROW, "late_candidates", sum(1 for s, _, _ in candidates if s > written))
            span = after[-1][1] - after[0][1] if len(after) > 1 else 0.0
            if span > 0:
                part.add(ROW, "rps", len(after) / span)
        part.info["errors"] = {"requests_failed": load.errors}
    part.target(
        "last candidate response after rollback",
        part.median(ROW, "last_candidate_ms"),
        "<=",
        100.0,
        " ms",
    )
    worst = max(part.rows[ROW]["last_candidate_ms"])
    part.target("worst round", worst, "<=", 100.0, " ms")
    part.notes.append(
        "the write is flagctl rollback's code path (FlagAdmin.update + mutations.rollback) run "
        "in-process, so a CLI's ~0.3 s Python start-up is not counted; in-flight requests count"
    )
    return part
