"""Part 2, the hop: what one proxy hop in front of Triton costs, nginx vs the sidecar.

Four paths to the same real ``tritonserver`` (CPU, digits v1/v2, 1x64 FP32 input):

* ``direct``: tritonclient -> Triton, asking for the version the flag would pick for the user;
* ``nginx``: tritonclient -> nginx ``grpc_pass`` (upstream keepalive, one worker) -> Triton, same;
* ``grpc.aio pass-through``: tritonclient -> ``bench/naive_proxy.py`` (bytes in, bytes out, uvloop)
  -> Triton, same: the floor of any Python grpc.aio hop;
* ``sidecar kserve``: tritonclient -> sidecar KServe-v2 facade (user id in ``x-user-id``, flags from
  Redis) -> Triton;
* ``sidecar native``: the generated ``TrafficSplit`` stub -> sidecar -> Triton;
* no hop: ``Triton direct (asyncio)`` and the ``in-process client`` (spans sampled out, or all
  exported) in the bench's own event loop (:mod:`bench.inproc`); their CPU is the client's.

Per round and path: concurrency 1 (sync clients) for p50/p99, then concurrency 16 (asyncio clients)
for throughput and the CPU time per request of the hop process (nginx master + worker, or the
sidecar, read from /proc before and after). Paths alternate within a round and their order rotates
from round to round. All users cycle through the same 512 ids, so every path runs the same version
mix on Triton.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio

from bench import inproc
from bench.common import drive, tree_cpu_seconds
from bench.report import Metric, PartReport, percentile
from bench.servers import DIGITS_FLAG, naive_proxy, nginx, sidecar, stack
from flags.compiled import CompiledFlag
from flags.evaluation import Subject
from flags.schema import parse_flag
from flags.snapshot import Snapshot, evaluate
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2 as pb
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2_grpc as pb_grpc

DIRECT, NGINX, NAIVE = "direct", "nginx", "grpc.aio pass-through"
KSERVE, NATIVE = "sidecar kserve", "sidecar native"
PATHS = (DIRECT, NGINX, NAIVE, KSERVE, NATIVE, *inproc.PATHS)
USERS = [f"user-{i:04d}" for i in range(512)]
CONCURRENCY = 16


def pixels() -> np.ndarray[Any, Any]:
    return np.linspace(0, 16, 64, dtype=np.float32).reshape(1, 64)


def flag_versions() -> list[str]:
    """The version the digits flag assigns each user: what direct and nginx ask Triton for."""
    snapshot = Snapshot({"digits": CompiledFlag(parse_flag(json.loads(DIGITS_FLAG.read_text())))})
    versions = []
    for uid in USERS:
        target = evaluate(snapshot, "digits", Subject(uid)).target
        assert target is not None
        versions.append(target.version)
    return versions


@dataclass
class Endpoint:
    """How to send request ``i`` on one path, synchronously and with asyncio."""

    name: str
    url: str
    hop_pid: int | None
    redis_url: str = ""  # the in-process client's flags

    def sync_call(self) -> tuple[Callable[[int], object], Callable[[], None]]:
        return self._call(grpc.insecure_channel, triton_grpc.InferenceServerClient)

    def async_call(
        self,
    ) -> tuple[Callable[[int], Awaitable[object]], Callable[[], Awaitable[None]]]:
        return self._call(grpc.aio.insecure_channel, triton_aio.InferenceServerClient)

    def _call(self, open_channel: Any, client_class: Any) -> tuple[Any, Any]:
        """Request ``i`` on this path with the given (sync or asyncio) channel/client flavour."""
        x = pixels()
        if self.name == NATIVE:
            channel = open_channel(self.url)
            stub = pb_grpc.TrafficSplitStub(channel)  # type: ignore[no-untyped-call]
            requests = native_requests(x)
            return (lambda i: stub.Infer(requests[i % len(requests)], timeout=10)), channel.close
        client = client_class(self.url)
        inputs = [triton_grpc.InferInput("pixels", [1, 64], "FP32")]
        inputs[0].set_data_from_numpy(x)
        versions, headers = self._routing()
        return (
            lambda i: client.infer(
                "digits",
                inputs,
                model_version=versions[i % len(versions)],
                headers=headers[i % len(headers)],
                client_timeout=10,
            )
        ), client.close

    def _routing(self) -> tuple[list[str], list[dict[str, str] | None]]:
        if self.name == KSERVE:  # the sidecar picks the version from the user id
            return [""], [{"x-user-id": uid} for uid in USERS]
        return flag_versions(), [None]


def native_requests(x: np.ndarray[Any, Any]) -> list[pb.InferRequest]:
    tensor = pb.Tensor(name="pixels", datatype="FP32", shape=[1, 64], data=x.tobytes())
    return [
        pb.InferRequest(subject=pb.Subject(id=uid), model="digits", inputs=[tensor])
        for uid in USERS
    ]


def concurrency_1(endpoint: Endpoint, total: int, warmup: int) -> list[float]:
    call, close = endpoint.sync_call()
    try:
        for i in range(warmup):
            call(i)
        latencies = []
        for i in range(total):
            start = time.perf_counter()
            call(i)
            latencies.append(time.perf_counter() - start)
        return latencies
    finally:
        close()


async def concurrency_n(endpoint: Endpoint, total: int, limit_s: float) -> tuple[int, float]:
    """``total`` requests from 16 tasks, or fewer if ``limit_s`` runs out: (count, seconds)."""
    call, close = endpoint.async_call()
    try:
        return await drive(call, total, limit_s, CONCURRENCY)
    finally:
        await close()


_C1: dict[str, list[float]] = {}  # the no-hop paths' c=1 latencies, measured together


def measure(
    part: PartReport, endpoint: Endpoint, triton_pid: int, c1: int, cn: int, limit_s: float
) -> dict[str, float]:
    no_hop = endpoint.name in inproc.PATHS
    args: dict[str, Any] = {"triton_url": endpoint.url, "redis_url": endpoint.redis_url,
                            "users": USERS, "x": pixels()}  # fmt: skip
    if no_hop:  # c=1 for the three no-hop paths together, interleaved (bench.inproc)
        if endpoint.name not in _C1:
            _C1.update(asyncio.run(inproc.latencies(c1, max(20, c1 // 20), **args)))
        latencies = _C1.pop(endpoint.name)
    else:
        latencies = concurrency_1(endpoint, c1, warmup=max(20, c1 // 20))
    hop_before = tree_cpu_seconds(endpoint.hop_pid) if endpoint.hop_pid else 0.0
    triton_before = tree_cpu_seconds(triton_pid)
    client_before = time.process_time()
    if no_hop:
        throughput = inproc.throughput(endpoint.name, cn, limit_s, CONCURRENCY, **args)
        count, seconds = asyncio.run(throughput)
    else:
        count, seconds = asyncio.run(concurrency_n(endpoint, cn, limit_s))
    client_cpu = time.process_time() - client_before
    triton_cpu = tree_cpu_seconds(triton_pid) - triton_before
    result = {
        "p50_us": percentile(latencies, 50) * 1e6,
        "p99_us": percentile(latencies, 99) * 1e6,
        "rps": count / seconds,
        "client_cpu_us": client_cpu / count * 1e6,
        "triton_cpu_us": triton_cpu / count * 1e6,
    }
    if endpoint.hop_pid:
        result["hop_cpu_us"] = (tree_cpu_seconds(endpoint.hop_pid) - hop_before) / count * 1e6
    for key, value in result.items():
        part.add(endpoint.name, key, value)
    return result


def run(*, rounds: int = 5, quick: bool = False) -> PartReport:
    c1, cn, limit_s = (400, 1500, 10.0) if quick else (2000, 5000, 20.0)
    part = PartReport(
        name="hop",
        title="One hop in front of Triton (CPU): 1x64 FP32 digits, c=1 latency, c=16 throughput",
        metrics=[
            Metric("p50_us", "c1 p50 µs", 0),
            Metric("p99_us", "c1 p99 µs", 0),
            Metric("added_p50_us", "added p50 µs", 0),
            Metric("x_nginx_added", "added / nginx's", 2),
            Metric("rps", "c16 req/s", 0),
            Metric("x_direct_rps", "x direct req/s", 2),
            Metric("hop_cpu_us", "hop CPU µs/req", 0),
            Metric("x_nginx_cpu", "CPU / nginx's", 2),
            Metric("triton_cpu_us", "Triton CPU µs/req", 0),
            Metric("client_cpu_us", "client CPU µs/req", 0),
            Metric("added_client_cpu_us", "added client CPU µs/req", 1),
        ],
    )
    part.params = {
        "rounds": rounds,
        "requests_c1": c1,
        "requests_c16": cn,
        "c16_time_limit_s": limit_s,
        "users": len(USERS),
        "flag": "deploy/flags/digits.json (80/20 split) + an experiment section",
    }
    with ExitStack() as exits:
        st = exits.enter_context(stack(inproc.bench_flag()))
        proxy = exits.enter_context(nginx(st.triton.grpc_port))
        naive = exits.enter_context(naive_proxy(st.triton.grpc_url))
        side = exits.enter_context(sidecar(st.redis.url, st.triton.grpc_url))
        endpoints = {
            DIRECT: Endpoint(DIRECT, st.triton.grpc_url, None),
            NGINX: Endpoint(NGINX, proxy.url, proxy.pid),
            NAIVE: Endpoint(NAIVE, naive.url, naive.pid),
            KSERVE: Endpoint(KSERVE, side.address, side.pid),
            NATIVE: Endpoint(NATIVE, side.address, side.pid),
            **{
                name: Endpoint(name, st.triton.grpc_url, None, st.redis.url)
                for name in inproc.PATHS
            },
        }
        part.info["processes"] = {
            "nginx": proxy.pid,
            "naive_proxy": naive.pid,
            "sidecar": side.pid,
            "triton": st.triton.pid,
        }
        for r in range(rounds):
            order = PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]
            results = {
                name: measure(part, endpoints[name], st.triton.pid, c1, cn, limit_s)
                for name in order
            }
            derive(part, results)
    add_targets(part)
    part.notes.append(
        "in-process rows: added = p50 minus Triton direct (asyncio)'s in the same round, and "
        "their CPU is the bench process's own (client_cpu_us)"
    )
    part.notes.append(
        "added = p50 minus direct's p50 in the same round; CPU columns are measured during the "
        "c16 phase; the client, Triton and the hop share this machine's CPUs"
    )
    return part


def derive(part: PartReport, results: dict[str, dict[str, float]]) -> None:
    direct = results[DIRECT]
    nginx_added = results[NGINX]["p50_us"] - direct["p50_us"]
    for name in (NGINX, NAIVE, KSERVE, NATIVE):
        added = results[name]["p50_us"] - direct["p50_us"]
        part.add(name, "added_p50_us", added)
        part.add(name, "x_direct_rps", results[name]["rps"] / direct["rps"])
        if name != NGINX:
            if nginx_added > 0:
                part.add(name, "x_nginx_added", added / nginx_added)
            part.add(
                name, "x_nginx_cpu", results[name]["hop_cpu_us"] / results[NGINX]["hop_cpu_us"]
            )
    base = results[inproc.DIRECT_AIO]
    for name in (inproc.INPROC, inproc.INPROC_SPANS):
        part.add(name, "added_p50_us", results[name]["p50_us"] - base["p50_us"])
        part.add(name, "x_direct_rps", results[name]["rps"] / base["rps"])
        part.add(
            name, "added_client_cpu_us", results[name]["client_cpu_us"] - base["client_cpu_us"]
        )


def add_targets(part: PartReport) -> None:
    part.target(
        "in-process client added p50 vs Triton direct (asyncio)",
        part.median(inproc.INPROC, "added_p50_us"),
        "<=",
        20.0,
        "µs",
    )
    for name in (KSERVE, NATIVE):
        part.target(
            f"{name} added p50 vs nginx's", part.median(name, "x_nginx_added"), "<=", 2.0, "x"
        )
        part.target(
            f"{name} c16 throughput vs direct", part.median(name, "x_direct_rps"), ">=", 0.6, "x"
        )
        part.target(
            f"{name} CPU/request vs nginx's", part.median(name, "x_nginx_cpu"), "<=", 3.0, "x"
        )
