"""Part: experiments. The event path's costs, each against a baseline in the same run.

1. Exposure recording per request: ``on_settled`` through the observer fan-out with the
   :class:`~sidecar.exposures.ExposureRecorder` vs a no-op observer, for returning users (the
   common case: a dedupe hit) and for new users (an Exposure built and buffered each time).
2. ``Track`` throughput of one sidecar process (Redis streams behind it) vs ``Assign`` (the
   cheapest RPC it serves), both driven by one grpc.aio client at concurrency 16.
3. Ingestion: exposures + outcomes written to the Redis streams, ingested into a DuckDB file;
   events/s, Redis bytes per stream entry, DuckDB bytes per event (extrapolated per million
   users: 1 exposure + 2 outcomes each).

(The statistics' report timing belongs in this part too: the ``stats`` branch adds its rows.)
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import ROOT, RedisServer
from bench.report import Metric, PartReport
from experiments.events.model import FIELD, Event, Exposure, Outcome
from experiments.events.sinks import EventKeys, FileSink, RedisStreamSink
from experiments.ingest import ingest_redis
from experiments.store import ExperimentStore
from flags import Subject
from flags.admin import FlagAdmin
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from flags.schema import parse_flag
from flags.store import FlagStore
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2 as pb
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2_grpc as pb_grpc
from sidecar.exposures import ExposureRecorder
from sidecar.launcher import SidecarProcess
from sidecar.observers import Exchange, Observer, Observers
from sidecar.outcome import Assignment, RequestOutcome
from sidecar.plan import plan_route

PREFIX = "bench-exp:"
NOOP, RETURNING, NEW = "no-op observer", "ExposureRecorder, returning users", "ExposureRecorder, new users"  # fmt: skip
ASSIGN, TRACK = "Assign RPC (baseline)", "Track RPC"
INGEST = "ingest Redis → DuckDB"
FLUSH = "sidecar flush to Redis (off the request path)"


def experiment_flag() -> dict[str, object]:
    doc: dict[str, object] = json.loads((ROOT / "deploy" / "flags" / "digits.json").read_text())
    doc.update(rules=[], allocation={"coverage": 100, "split": {"control": 50, "candidate": 50}})
    doc["experiment"] = {
        "metrics": [{"name": "correct", "type": "binary"},
                    {"name": "latency_ms", "type": "continuous", "aggregation": "mean"}],
        "primary_metric": "correct",
        "segments": ["tier"],
    }  # fmt: skip
    for key in ("shadow", "ramp"):
        doc.pop(key, None)
    return doc


def _per_call_ns(
    observer: Observer, store: FlagStore, users: int, n: int, sink: FileSink | None = None
) -> float:
    """Each request as the router makes it (a fresh Subject from the caller's user id, the
    plan, the Exchange, the settled outcome), then ``on_settled``: the per-request work is the
    same for every row, so the difference between rows is the observer's own cost. Every 1,000
    requests the sink's buffer is emptied, as its flush (off the request path) would."""
    start = time.perf_counter_ns()
    for i in range(n):
        if sink is not None and i % 1000 == 0:
            sink.buffer.clear()
        subject = Subject(f"user-{i % users}", {"tier": "pro"})
        plan = plan_route(store.snapshot, "digits", "", subject)
        exchange = Exchange("ModelInfer", "digits", subject, (), 0.0)
        outcome = RequestOutcome("ModelInfer", Assignment.planned(plan), (), "OK", "", 0.001)
        observer.on_settled(exchange, outcome)
    return (time.perf_counter_ns() - start) / n


def measure_recording(part: PartReport, requests: int, rounds: int) -> None:
    store = FlagStore()
    store.sync({"digits": json.dumps(experiment_flag())}, complete=True)
    returning_users = 10_000
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            noop = Observers([Observer()])
            sink = FileSink(Path(tmp) / "x", max_buffer=10**9)
            warm = ExposureRecorder(store, sink)
            _per_call_ns(Observers([warm]), store, returning_users, returning_users, sink)
            fresh = ExposureRecorder(store, sink)
            base = _per_call_ns(noop, store, requests, requests, sink)
            rows = {
                NOOP: base,
                RETURNING: _per_call_ns(Observers([warm]), store, returning_users, requests, sink),
                NEW: _per_call_ns(Observers([fresh]), store, requests, requests, sink),
            }
            for row, ns in rows.items():
                part.add(row, "us_per_request", ns / 1000)
                part.add(row, "added_us", (ns - base) / 1000)


async def _drive(stub: pb_grpc.TrafficSplitStub, rpc: str, n: int, concurrency: int) -> float:
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            if rpc == TRACK:
                await stub.Track(pb.TrackRequest(flag="digits", user_id=f"u{i}", metric="correct",
                                                 value=1.0, idempotency_key=f"b{i}"))  # fmt: skip
            else:
                await stub.Assign(pb.AssignRequest(model="digits", subject=pb.Subject(id=f"u{i}")))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


def measure_track(part: PartReport, redis: RedisServer, calls: int, rounds: int) -> None:
    admin = FlagAdmin(sync_client(redis.url), keys=RedisKeys(PREFIX), actor="bench")
    admin.apply(parse_flag(experiment_flag()), reason="bench", force=True)
    args = ["--redis-url", redis.url, "--redis-prefix", PREFIX, "--events-max-buffer", "1000000"]
    with SidecarProcess(args) as sidecar:

        async def run_rounds() -> None:
            async with grpc.aio.insecure_channel(sidecar.address) as channel:
                stub = pb_grpc.TrafficSplitStub(channel)  # type: ignore[no-untyped-call]
                await _drive(stub, ASSIGN, 200, 16)  # warm-up
                for _ in range(rounds):
                    for row in (ASSIGN, TRACK):
                        part.add(row, "rpc_per_s", await _drive(stub, row, calls, 16))

        asyncio.run(run_rounds())
    tracked = redis.client().xlen(EventKeys(PREFIX).outcomes)
    part.info[TRACK] = {"outcomes_in_stream": int(tracked), "expected": calls * rounds}


def measure_flush(part: PartReport, redis: RedisServer, events: int, rounds: int) -> None:
    """CPU per event of the sink's batched write (encode + pipelined XADD), which runs on the
    sidecar's event loop between requests: it costs CPU, not request latency."""
    keys = EventKeys(PREFIX + "flush:")
    batch = [
        Exposure("digits", "digits", f"user-{i}", "control", "1", 1_767_225_600_000 + i,
                 (("tier", "pro"),))
        for i in range(events)
    ]  # fmt: skip

    async def one_round() -> float:
        sink = RedisStreamSink(redis.url, keys=keys, max_buffer=events)
        for event in batch:
            sink.record(event)
        start = time.perf_counter_ns()
        assert await sink.flush()
        elapsed = time.perf_counter_ns() - start
        await sink.close()
        return elapsed / events / 1000

    for _ in range(rounds):
        part.add(FLUSH, "us_per_request", asyncio.run(one_round()))
        redis.client().delete(keys.exposures)


def measure_ingestion(part: PartReport, redis: RedisServer, users: int) -> None:
    keys = EventKeys(PREFIX + "ingest:")
    client = redis.client()
    t0 = 1_767_225_600_000
    pipe = client.pipeline(transaction=False)
    for i in range(users):
        variant = "control" if i % 2 else "candidate"
        events: list[Event] = [
            Exposure("digits", "digits", f"user-{i}", variant, "1" if i % 2 else "2", t0 + i,
                     (("tier", "pro" if i % 3 else "free"),)),
            Outcome(f"c{i}", "digits", "digits", f"user-{i}", "correct", float(i % 2), t0 + i + 5),
            Outcome(f"l{i}", "digits", "digits", f"user-{i}", "latency_ms", 3.5, t0 + i + 6),
        ]  # fmt: skip
        for event in events:
            pipe.xadd(keys.stream_of(event), {FIELD: event.encode()})
        if len(pipe) >= 15_000:
            pipe.execute()
    pipe.execute()
    entries = users * 3
    stream_bytes = sum(
        int(client.memory_usage(k, samples=0) or 0) for k in (keys.exposures, keys.outcomes)
    )
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        start = time.perf_counter()
        with ExperimentStore(db) as store:
            report = ingest_redis(store, client, keys)
        seconds = time.perf_counter() - start
        with ExperimentStore(db) as store:
            start = time.perf_counter()
            plan = parse_flag(experiment_flag()).experiment
            assert plan is not None
            store.metric("digits", plan, "correct", segments=["tier"])
            aggregate_s = time.perf_counter() - start
        size = db.stat().st_size
    part.add(INGEST, "events_per_s", report.read / seconds)
    part.add(INGEST, "redis_bytes_per_event", stream_bytes / entries)
    part.add(INGEST, "duckdb_bytes_per_event", size / entries)
    part.info[INGEST] = {
        "users": users,
        "events": entries,
        "ingest_s": round(seconds, 2),
        "one_metric_aggregation_s": round(aggregate_s, 3),
        "redis_mb_per_million_users": round(stream_bytes / users, 1),
        "duckdb_mb_per_million_users": round(size / users, 1),
        "trimmed": report.trimmed,
    }


def run(*, requests: int = 200_000, rounds: int = 5, track_calls: int = 5_000,
        ingest_users: int = 500_000) -> PartReport:  # fmt: skip
    part = PartReport(
        name="experiments",
        title="Experiments: exposure recording, Track, ingestion",
        metrics=[
            Metric("us_per_request", "µs/request", 3),
            Metric("added_us", "added µs", 3),
            Metric("rpc_per_s", "RPC/s", 0),
            Metric("events_per_s", "events/s", 0),
            Metric("redis_bytes_per_event", "Redis B/event", 0),
            Metric("duckdb_bytes_per_event", "DuckDB B/event", 0),
        ],
    )
    part.params = {"requests": requests, "rounds": rounds, "track_calls": track_calls,
                   "ingest_users": ingest_users}  # fmt: skip
    measure_recording(part, requests, rounds)
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        redis = RedisServer(Path(tmp)).start()
        try:
            measure_flush(part, redis, 20_000, rounds)
            measure_track(part, redis, track_calls, rounds)
            measure_ingestion(part, redis, ingest_users)
        finally:
            redis.stop()
    for row in (RETURNING, NEW):
        part.target(f"{row}: added µs", part.median(row, "added_us"), "<=", 2.0, " µs")
    part.notes.append(
        "recording rows: on_settled through the observer fan-out, per request, in-process; "
        "'new users' builds and buffers an Exposure every time (the worst case)"
    )
    part.notes.append(
        "Track: accepted into the sidecar's buffer, written to Redis in batches; one grpc.aio "
        "client at concurrency 16 on the same machine"
    )
    part.notes.append(
        "ingestion: 1 exposure + 2 outcomes per user; cost per million users = bytes/event x 3M"
    )
    return part
