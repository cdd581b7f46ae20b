"""Part: signals. What recording fleet-wide signals costs a request, and what it costs Redis.

1. Per-request cost: ``SignalRecorder.on_settled`` on a realistic outcome (one attempt; and a
   fallback, two attempts), against a no-op observer's ``on_settled`` in the same rounds. The
   clock read is included; nothing is written (the flush runs off the request path). The CPU the
   flush task later spends counting each request (in slices, between requests) is shown apart.
2. Redis load: 1, 10 and 100 simulated sidecars (each its own Aggregator, writer and Redis
   connection) record a fixed request rate each for a few simulated seconds (80/20 split, 1 %
   errors, log-normal latencies); after each second all of them flush, concurrently, as the flush
   task does every 1 s. Redis commands are counted by Redis itself (INFO commandstats), per
   simulated second: what Redis serves per second of real time at a 1 s interval. A row at 10x
   the request rate shows the write load does not follow the request rate.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path

import redis

from bench.common import RedisServer
from bench.report import Metric, PartReport
from flags import Subject
from flags.redis_conn import async_client
from sidecar.observers import Exchange, Observer
from sidecar.outcome import Assignment, Attempt, FallbackCause, RequestOutcome
from sidecar.plan import Hop, Membership, RoutePlan
from sidecar.signal_recorder import SignalRecorder
from signals.aggregate import Aggregator, encode_steps
from signals.codec import Batch
from signals.flusher import Flusher
from signals.redis_window import RedisSignalWriter, read_window

NOOP = "no-op observer (baseline)"
ONE = "SignalRecorder, 1 attempt"
TWO = "SignalRecorder, fallback (2 attempts)"
PREFIX = "bench:"
CHUNK = 2000


class _NullWriter:
    async def write(self, batch: Batch) -> int:
        return 0


def _outcomes() -> tuple[RequestOutcome, RequestOutcome]:
    plan = RoutePlan("digits", "candidate", "SPLIT", Hop("digits", "2"), Hop("digits", "1"), 7,
                     membership=Membership.EXPOSED)  # fmt: skip
    served = RequestOutcome("ModelInfer", Assignment.planned(plan),
                            (Attempt("triton", "digits", "2", "OK", 0.0012),), "OK", "", 0.0013)  # fmt: skip
    fallback = RequestOutcome(
        "ModelInfer",
        Assignment(plan, plan.fallback or plan.primary, "1", FallbackCause.ERROR),
        (Attempt("triton", "digits", "2", "UNAVAILABLE", 0.0004),
         Attempt("triton", "digits", "1", "OK", 0.0011)),
        "OK", "", 0.0016,
    )  # fmt: skip
    return served, fallback


def _per_call_us(
    observer: Observer, outcome: RequestOutcome, calls: int, recorder: SignalRecorder
) -> tuple[float, float]:
    """µs per ``on_settled`` call, and µs per request of counting them later in the flush task.
    Calls come in chunks of CHUNK (a second's worth at 2,000 req/s); the recorder's log is taken
    between chunks, untimed, as the flush task does every second."""
    exchange = Exchange("ModelInfer", "digits", Subject("u"), (), 0.0)
    settle = observer.on_settled
    aggregator = recorder.flusher.aggregator
    elapsed = counting = 0.0
    for _ in range(max(1, calls // CHUNK)):
        started = time.perf_counter()
        for _ in range(CHUNK):
            settle(exchange, outcome)
        elapsed += time.perf_counter() - started
        taken = aggregator.take(None)
        started = time.perf_counter()
        for _ in encode_steps(taken, {}):
            pass
        counting += time.perf_counter() - started
    done = max(1, calls // CHUNK) * CHUNK
    return elapsed / done * 1e6, counting / done * 1e6


def _writes(client: redis.Redis) -> tuple[int, int]:
    """Write commands (HINCRBY, EXPIRE, MULTI, EXEC) and MULTIs (one per pipelined flush) that
    Redis has served so far, by its own count."""
    stats = client.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    writes = sum(calls.get(c, 0) for c in ("hincrby", "expire", "multi", "exec"))
    return writes, calls.get("multi", 0)


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _simulate(
    url: str, sidecars: int, rate: int, seconds: int, seed: int
) -> dict[str, float]:
    """Returns Redis commands and round trips per simulated second and flush wall time."""
    rng = random.Random(seed)
    latencies = [rng.lognormvariate(-6.5, 0.4) for _ in range(4096)]  # ~1.5 ms median
    clock = _Clock(float(1_800_000_000 + seed * 10_000))
    writers = [RedisSignalWriter(async_client(url), PREFIX) for _ in range(sidecars)]
    flushers = [Flusher(Aggregator(), w, clock=clock) for w in writers]
    flush_s = 0.0
    start = int(clock.now)
    for second in range(start, start + seconds):
        clock.now = second + 0.5
        for n, flusher in enumerate(flushers):
            add = flusher.aggregator.add
            for i in range(rate):
                k = n * 7 + i
                version, group = ("2", "exposed") if k % 5 == 0 else ("1", "exposed")
                result = "UNAVAILABLE" if k % 100 == 0 else "OK"
                add(second, "digits", group, "triton", "digits", version, result,
                    latencies[k % 4096])  # fmt: skip
        clock.now = second + 1
        began = time.perf_counter()
        ok = await asyncio.gather(*(f.flush_once() for f in flushers))
        flush_s += time.perf_counter() - began
        assert all(ok), "a flush failed"
    window = await read_window(writers[0]._client, PREFIX, "digits", start, start + seconds)
    recorded = sum(s.attempts for s in window.stats.values())
    assert recorded == sidecars * rate * seconds, (recorded, sidecars * rate * seconds)
    for w in writers:
        await w.close()
    return {"flush_ms": flush_s / seconds * 1000}


def run(rounds: int = 3, calls: int = 200_000, seconds: int = 5, rate: int = 200) -> PartReport:
    part = PartReport(
        "signals",
        "Signals: per-request recording cost, and Redis load for N sidecars (flush every 1 s)",
        [
            Metric("us_per_request", "µs/request", 3),
            Metric("added_us", "added µs", 3),
            Metric("flush_us_per_request", "µs/request in flush task", 3),
            Metric("cmds_per_s", "Redis cmds/s", 0),
            Metric("cmds_per_sidecar_s", "cmds/s per sidecar", 1),
            Metric("round_trips_per_s", "round trips/s", 0),
            Metric("flush_ms", "flush ms (all)", 1),
        ],
        params={"rounds": rounds, "calls": calls, "simulated_seconds": seconds, "rate": rate},
    )
    served, fallback = _outcomes()
    recorder = SignalRecorder(_NullWriter())
    baseline = Observer()
    for _ in range(rounds):
        noop, _ = _per_call_us(baseline, served, calls, recorder)
        one, count_one = _per_call_us(recorder, served, calls, recorder)
        two, count_two = _per_call_us(recorder, fallback, calls, recorder)
        part.add(NOOP, "us_per_request", noop)
        for row, spent, counted in ((ONE, one, count_one), (TWO, two, count_two)):
            part.add(row, "us_per_request", spent)
            part.add(row, "added_us", spent - noop)
            part.add(row, "flush_us_per_request", counted)

    cases = [(1, rate), (10, rate), (100, rate), (10, rate * 10)]
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            client = server.client()
            for r in range(rounds):
                for c, (sidecars, per_sidecar) in enumerate(cases):
                    row = f"{sidecars} sidecar{'s' if sidecars > 1 else ''} x {per_sidecar} req/s"
                    before, multis = _writes(client)
                    timing = asyncio.run(
                        _simulate(server.url, sidecars, per_sidecar, seconds, r * 10 + c)
                    )
                    after, multis_after = _writes(client)
                    part.add(row, "cmds_per_s", (after - before) / seconds)
                    part.add(row, "cmds_per_sidecar_s", (after - before) / seconds / sidecars)
                    part.add(row, "round_trips_per_s", (multis_after - multis) / seconds)
                    part.add(row, "flush_ms", timing["flush_ms"])
                client.flushall()
            client.close()
        finally:
            server.stop()
    part.target("recorder added µs/request", part.median(ONE, "added_us"), "<=", 2.0, " µs")
    low = part.median(f"10 sidecars x {rate} req/s", "cmds_per_s") or 0.0
    high = part.median(f"10 sidecars x {rate * 10} req/s", "cmds_per_s")
    # Proportional to the request rate would be 10x; more latency buckets and error kinds get
    # used at a higher rate, up to a bound (183 buckets x results per target), never beyond.
    part.target("Redis cmds/s growth at 10x the request rate", (high or 0) / low if low else None,
                "<=", 2.0, "x")  # fmt: skip
    trips = part.median(f"100 sidecars x {rate} req/s", "round_trips_per_s")
    part.target("pipelined writes per sidecar per second (100 sidecars)",
                trips / 100 if trips is not None else None, "<=", 1.0)  # fmt: skip
    part.notes.append(
        "Redis commands per flush: HINCRBY per (group, target, result | latency bucket) field, "
        "EXPIRE per key, MULTI/EXEC: bounded by the buckets in use, not by the request count"
    )
    return part


if __name__ == "__main__":
    from rich.console import Console

    from bench.report import print_part

    print_part(run(rounds=1, calls=100_000, seconds=3), Console(width=200))
