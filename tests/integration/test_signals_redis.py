"""Signals through a real redis-server: concurrent writers, exact merged windows, expiry, the
sidecar's ACL (read flags, write only signal keys), and Redis going away and coming back."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from redis.exceptions import NoPermissionError
from servers import RedisServer
from support import digits_flag

from flags import StoreAuthError, StoreUnavailableError, parse_flag
from flags.admin import FlagAdmin
from flags.redis_conn import async_client, sync_client
from flags.redis_keys import RedisKeys
from flags.sources import RedisFlagSource
from flags.store import FlagStore
from signals.aggregate import Aggregator
from signals.codec import Batch, add_batches, merge_hashes, signal_key
from signals.flusher import Flusher
from signals.model import Group, TargetKey, Window
from signals.redis_window import RedisSignalWriter, read_window, read_window_sync

pytestmark = pytest.mark.redis

MS = 1e-3
VERSIONS = ("1", "2")
RESULTS = ("OK", "OK", "OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", "NOT_READY")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def simulate(agg: Aggregator, seed: int, second: int, count: int) -> None:
    """``count`` attempts spread over versions, groups, results and latencies (deterministic)."""
    groups = (Group.EXPOSED, Group.PINNED, Group.NOT_IN_EXPERIMENT, Group.SHADOW)
    for i in range(count):
        k = seed * 7919 + i
        result = RESULTS[k % len(RESULTS)]
        agg.add(second, "digits", groups[k % 4], "onnx", "digits", VERSIONS[k // 4 % 2], result,
                (0.2 + (k % 97)) * MS, sent=result != "NOT_READY")  # fmt: skip


def acl_sidecar(server: RedisServer, prefix: str) -> str:
    """docs/rollouts.md's sidecar ACL: read everything under the prefix, write only signals.
    ``%RW~`` (not ``%W~``) on signal keys: HINCRBY reads the value it increments, and Redis checks
    each key against one pattern at a time."""
    server.client().execute_command(
        "ACL", "SETUSER", "sidecar", "on", ">s3cret", "resetkeys",
        f"%R~{prefix}*", f"%RW~{prefix}sig:*", "resetchannels", f"&{prefix}*",
        "-@all", "+@read", "+@connection", "+subscribe", "+hincrby", "+expire", "+multi", "+exec",
    )  # fmt: skip
    return f"redis://sidecar:s3cret@127.0.0.1:{server.port}/0"


def test_two_sidecars_writing_concurrently_sum_exactly(
    redis_server: RedisServer, prefix: str
) -> None:
    async def scenario() -> tuple[Batch, Window, int]:
        clock = Clock(1_000_000.0)
        expected: Batch = {}  # what both recorded, summed here: what Redis must hold
        writers = [RedisSignalWriter(async_client(redis_server.url), prefix) for _ in range(2)]
        flushers = [Flusher(Aggregator(), w, clock=clock) for w in writers]
        for second in range(1_000_000, 1_000_005):
            clock.now = second + 0.5
            for n, flusher in enumerate(flushers):
                simulate(flusher.aggregator, n + second, second, 150 + 10 * n)
                mirror = Aggregator()
                simulate(mirror, n + second, second, 150 + 10 * n)
                add_batches(expected, mirror.drain(None))
            clock.now = second + 1
            assert all(await asyncio.gather(*(f.flush_once() for f in flushers)))
        reader = async_client(redis_server.url)
        window = await read_window(reader, prefix, "digits", 1_000_000, 1_000_005)
        await reader.aclose()
        for flusher, writer in zip(flushers, writers, strict=True):
            await flusher.close()
            await writer.close()
        return expected, window, flushers[0].flushes

    expected, window, flushes = asyncio.run(scenario())
    assert flushes == 5
    want = merge_hashes("digits", 1_000_000, 1_000_005, list(expected.values()))
    assert window == want
    exposed_v2 = want.version("digits", "digits", "2")
    assert exposed_v2.attempts > 0 and exposed_v2.failures > 0
    total = sum(s.attempts for s in want.stats.values())
    assert total == 5 * (150 + 160)
    # the sync reader (CLIs) sees the same window
    assert read_window_sync(redis_server.client(), prefix, "digits", 1_000_000, 1_000_005) == want


def test_keys_expire_after_the_retention(redis_server: RedisServer, prefix: str) -> None:
    async def write() -> None:
        agg = Aggregator()
        agg.add(42, "digits", "exposed", "onnx", "digits", "1", "OK", MS)
        writer = RedisSignalWriter(async_client(redis_server.url), prefix, retention_s=90)
        await Flusher(agg, writer, clock=Clock(43.0), retention_s=90).flush_once()
        await writer.close()

    asyncio.run(write())
    ttl = redis_server.client().ttl(signal_key(prefix, "digits", 42))
    assert 0 < ttl <= 90


def test_reader_refuses_nonsense_ranges_and_reports_an_unreachable_redis(
    redis_server: RedisServer, prefix: str
) -> None:
    with pytest.raises(ValueError, match="ends after it starts"):
        read_window_sync(redis_server.client(), prefix, "digits", 10, 5)
    with pytest.raises(ValueError, match="at most"):
        read_window_sync(redis_server.client(), prefix, "digits", 0, 10**6)
    empty = read_window_sync(redis_server.client(), prefix, "digits", 5, 10)
    assert empty.stats == {} and empty.version("digits", "digits", "1").error_rate is None
    dead = "redis://127.0.0.1:1/0"
    with pytest.raises(StoreUnavailableError, match="cannot reach Redis"):
        read_window_sync(sync_client(dead, timeout=0.5), prefix, "digits", 0, 2, url=dead)


def test_sidecar_acl_loads_flags_writes_signals_and_cannot_write_flags(
    fresh_redis: RedisServer, prefix: str
) -> None:
    admin = FlagAdmin(sync_client(fresh_redis.url), keys=RedisKeys(prefix), url=fresh_redis.url)
    first = admin.apply(parse_flag(digits_flag()), reason="setup").revision
    url = acl_sidecar(fresh_redis, prefix)

    async def as_sidecar() -> tuple[int | None, bool]:
        store = FlagStore()
        source = RedisFlagSource(url, store, keys=RedisKeys(prefix))
        await source.start()
        try:
            loaded = store.snapshot["digits"].revision if "digits" in store.snapshot else None
            agg = Aggregator()
            agg.add(7, "digits", "exposed", "onnx", "digits", "2", "NOT_READY", 0.0, sent=False)
            writer = RedisSignalWriter(async_client(url), prefix, url=url)
            flushed = await Flusher(agg, writer, clock=Clock(8.0)).flush_once()
            await writer.close()
            return loaded, flushed
        finally:
            await source.close()

    assert asyncio.run(as_sidecar()) == (first, True)
    window = read_window_sync(sync_client(url), prefix, "digits", 7, 8)
    key = TargetKey("digits", Group.EXPOSED, "onnx", "digits", "2")
    assert (window.stats[key].attempts, window.stats[key].failures) == (1, 1)
    # A flag write with the sidecar's user is refused, by command and by key pattern.
    sidecar_admin = FlagAdmin(sync_client(url), keys=RedisKeys(prefix), url=url)
    with pytest.raises(StoreAuthError, match="permission denied"):
        sidecar_admin.apply(parse_flag(digits_flag(enabled=False)), reason="must fail")
    no_key_permission = "no permissions to access one of the keys"
    with pytest.raises(NoPermissionError, match=no_key_permission):
        sync_client(url).hincrby(RedisKeys(prefix).flag("digits"), "x", 1)
    with pytest.raises(NoPermissionError, match=no_key_permission):
        sync_client(url).expire(RedisKeys(prefix).flag("digits"), 1)
    assert admin.get("digits").revision == first


def test_redis_down_keeps_a_bounded_backlog_then_catches_up(tmp_path: Path, prefix: str) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:

        async def scenario() -> Flusher:
            clock = Clock(500.0)
            agg = Aggregator()
            writer = RedisSignalWriter(
                async_client(server.url, timeout=0.5), prefix, url=server.url
            )
            flusher = Flusher(agg, writer, clock=clock, max_backlog=2)
            server.kill()
            for second in (500, 501, 502, 503):
                agg.add(second, "digits", "exposed", "onnx", "digits", "2", "OK", MS)
                clock.now = second + 1
                assert await flusher.flush_once() is False
            assert (flusher.backlog, flusher.dropped_attempts) == (2, 2)
            server.start()
            assert await flusher.flush_once() is True
            await writer.close()
            return flusher

        flusher = asyncio.run(scenario())
        assert flusher.failures == 4 and flusher.backlog == 0
        window = read_window_sync(server.client(), prefix, "digits", 500, 504)
        assert window.version("digits", "digits", "2").attempts == 2  # 502 and 503 survived
        assert server.client().exists(signal_key(prefix, "digits", 500)) == 0
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("rules", "writes"),
    [
        # docs/rollouts.md: a user of its own for signals (--signals-redis-url)
        (("resetkeys", "~{p}sig:*", "-@all", "+@connection", "+hincrby", "+expire", "+multi",
          "+exec"), True),
        # %W~ alone is not enough: HINCRBY reads the value it increments
        (("resetkeys", "%R~{p}*", "%W~{p}sig:*", "-@all", "+@read", "+@connection", "+hincrby",
          "+expire", "+multi", "+exec"), False),
        # without MULTI, Redis runs the HINCRBYs outside a transaction: the batch must not be
        # retried (it would count twice), so an ACL refusal is dropped, never retried
        (("resetkeys", "~{p}sig:*", "-@all", "+@connection", "+hincrby", "+expire"), None),
    ],
)  # fmt: skip
def test_documented_acl_variants(
    fresh_redis: RedisServer, rules: tuple[str, ...], writes: bool | None
) -> None:
    prefix = f"acl-{uuid.uuid4().hex[:8]}:"  # the test id's [brackets] are glob syntax in ACLs
    fresh_redis.client().execute_command(
        "ACL", "SETUSER", "signals", "on", ">pw", *(r.format(p=prefix) for r in rules)
    )
    url = f"redis://signals:pw@127.0.0.1:{fresh_redis.port}/0"

    async def flush_twice() -> Flusher:
        agg = Aggregator()
        agg.add(3, "digits", "exposed", "onnx", "digits", "1", "OK", MS)
        writer = RedisSignalWriter(async_client(url), prefix, url=url)
        flusher = Flusher(agg, writer, clock=Clock(4.0))
        await flusher.flush_once()
        await flusher.flush_once()  # a refused batch is not tried again
        await writer.close()
        return flusher

    flusher = asyncio.run(flush_twice())
    once = {b"exposed|onnx|digits|1|a": b"1", b"exposed|onnx|digits|1|r:OK": b"1",
            b"exposed|onnx|digits|1|b:35": b"1"}  # fmt: skip
    written = fresh_redis.client().hgetall(signal_key(prefix, "digits", 3))
    if writes:
        assert (flusher.flushes, flusher.failures, flusher.dropped_attempts) == (1, 0, 0)
        assert written == once
    else:  # refused: dropped and counted, not kept for a retry
        assert (flusher.flushes, flusher.failures, flusher.dropped_attempts) == (0, 1, 1)
        assert flusher.backlog == 0
        assert written == ({} if writes is False else once)  # never more than once
