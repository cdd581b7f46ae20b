"""Events through a real redis-server: batched stream writes, an outage (buffered, retried, and
the bound with its drop counter), idempotent ingestion into DuckDB with trimming."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from servers import RedisServer

from experiments.events.model import FIELD, Event, Exposure, Outcome
from experiments.events.sinks import EventKeys, RedisStreamSink
from experiments.ingest import ingest_redis
from experiments.store import ExperimentStore

pytestmark = [pytest.mark.redis]

T = 1_767_225_600_000


def exposures(start: int, n: int) -> list[Event]:
    return [
        Exposure("e", "digits", f"u{i}", "control", "1", T + i) for i in range(start, start + n)
    ]


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Wait for a condition with a deadline (the sink's own loop does the work)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def sink_for(redis: RedisServer, prefix: str, **kw: object) -> RedisStreamSink:
    return RedisStreamSink(redis.url, keys=EventKeys(prefix), interval_s=0.02, **kw)  # type: ignore[arg-type]


def test_nothing_is_lost_while_redis_is_briefly_away(fresh_redis: RedisServer, prefix: str) -> None:
    keys = EventKeys(prefix)
    store = ExperimentStore()

    async def scenario() -> None:
        sink = sink_for(fresh_redis, prefix)
        await sink.start()
        for event in exposures(0, 50):
            sink.record(event)
        await until(lambda: sink.written == 50, "the first 50 written")
        assert sink.stream_lengths[keys.exposures] == 50
        ingest_redis(store, fresh_redis.client(), keys)  # before the outage: in DuckDB
        fresh_redis.kill()
        for event in exposures(50, 30):
            sink.record(event)
        await until(lambda: sink.failed_flushes >= 2, "failed flushes while Redis is down")
        assert (len(sink.buffer), sink.dropped) == (30, 0)
        fresh_redis.start()  # same port, empty (no persistence)
        await until(lambda: sink.written == 80, "the buffered 30 written after the restart")
        await sink.close()

    asyncio.run(scenario())
    report = ingest_redis(store, fresh_redis.client(), keys)
    assert report.exposures_added == 30
    assert store.exposure_summary("e").users == {"control": 80}


def test_a_full_buffer_drops_and_counts(fresh_redis: RedisServer, prefix: str) -> None:
    keys = EventKeys(prefix)

    async def scenario() -> RedisStreamSink:
        sink = sink_for(fresh_redis, prefix, max_buffer=10)
        await sink.start()
        fresh_redis.kill()
        for event in exposures(0, 25):
            sink.record(event)
        assert (len(sink.buffer), sink.dropped) == (10, 15)
        fresh_redis.start()
        await until(lambda: sink.written == 10, "the 10 buffered written")
        await sink.close()
        return sink

    sink = asyncio.run(scenario())
    assert sink.dropped == 15
    assert fresh_redis.client().xlen(keys.exposures) == 10


def test_streams_are_capped_at_their_maxlen(redis_server: RedisServer, prefix: str) -> None:
    keys = EventKeys(prefix)

    async def scenario() -> RedisStreamSink:
        sink = sink_for(redis_server, prefix, stream_max_len=100)
        await sink.start()
        for event in exposures(0, 1000):
            sink.record(event)
        await until(lambda: sink.written == 1000, "1000 written")
        await sink.close()
        return sink

    sink = asyncio.run(scenario())
    length = redis_server.client().xlen(keys.exposures)
    assert 100 <= length < 1000  # MAXLEN ~ trims whole nodes: about the bound, never unbounded
    assert sink.stream_lengths[keys.exposures] == length


def test_ingestion_is_idempotent_trims_and_skips_garbage(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    keys = EventKeys(prefix)
    client = redis_server.client()
    outcome = Outcome("k1", "e", "digits", "u1", "clicks", 2.0, T + 5)
    for event in [*exposures(0, 3), outcome, outcome]:  # a retried batch: the outcome twice
        client.xadd(keys.stream_of(event), {FIELD: event.encode()})
    client.xadd(keys.outcomes, {FIELD: '["o","id","e","digits","u1","m",NaN,1]'})  # hand-written
    db = tmp_path / "events.duckdb"
    with ExperimentStore(db) as store:
        first = ingest_redis(store, client, keys, trim=False, chunk=2)
        assert (first.read, first.exposures_added, first.outcomes_added, first.malformed) == (
            6, 3, 1, 1,
        )  # fmt: skip
        again = ingest_redis(store, client, keys, chunk=2)  # the same entries, then trimmed
        assert (again.exposures_added, again.outcomes_added, again.trimmed) == (0, 0, 6)
        assert client.xlen(keys.exposures) == client.xlen(keys.outcomes) == 0
        assert store.table_counts() == {"exposures": 3, "outcomes": 1}
