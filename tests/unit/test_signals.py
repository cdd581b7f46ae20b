"""Signals, pure: the aggregate, the hash codec, merging windows, and the flusher's backlog.

Exact numbers throughout: counts and histogram buckets are integers, so sums are exact, and the
p99 of a merged histogram is the p99 of the histogram of all samples.
"""

from __future__ import annotations

import asyncio
import logging
from types import MappingProxyType

import pytest

from flags import StoreAuthError
from signals.aggregate import Aggregator
from signals.codec import (
    Batch,
    add_batches,
    escape,
    merge_hashes,
    parse_field,
    signal_key,
    target_prefix,
    unescape,
)
from signals.flusher import Flusher
from signals.latency import BOUNDARIES, BOUNDARY_COUNT, bucket_index, quantile
from signals.model import HISTOGRAM_SIZE, Group, TargetKey

MS = 1e-3


def hist(*samples: float) -> tuple[int, ...]:
    counts = [0] * HISTOGRAM_SIZE
    for s in samples:
        counts[bucket_index(s)] += 1
    return tuple(counts)


class MemoryWriter:
    """A BatchWriter that adds into dicts, as HINCRBY does; ``fail`` makes writes raise."""

    def __init__(self) -> None:
        self.hashes: dict[tuple[str, int], dict[str, int]] = {}
        self.fail = False
        self.refuse = False
        self.writes = 0

    async def write(self, batch: Batch) -> int:
        if self.refuse:
            raise StoreAuthError("NOPERM")
        if self.fail:
            raise ConnectionError("store down")
        self.writes += 1
        add_batches(self.hashes, batch)
        return sum(len(f) + 1 for f in batch.values())


# -- codec -----------------------------------------------------------------------------------


def test_key_layout() -> None:
    assert signal_key("trafficsplit:", "digits", 1_700_000_000) == (
        "trafficsplit:sig:digits:1700000000"
    )
    assert target_prefix("exposed", "onnx", "digits", "2") == "exposed|onnx|digits|2|"


@pytest.mark.parametrize("name", ["plain", "a|b", "100%", "%7C", "|%|", ""])
def test_names_round_trip_through_escaping(name: str) -> None:
    assert "|" not in escape(name)
    assert unescape(escape(name)) == name
    field = parse_field(target_prefix("pinned", name, name, name) + "a")
    assert field is not None and (field.backend, field.model, field.version) == (name, name, name)


@pytest.mark.parametrize(
    "name",
    [
        "exposed|onnx|digits|2",  # four parts
        "exposed|onnx|digits|2|a|x",  # six parts
        "nobody|onnx|digits|2|a",  # unknown group
        "exposed|onnx|digits|2|z",  # unknown kind
        "exposed|onnx|digits|2|r:",  # a result without a name
        "exposed|onnx|digits|2|b:x",  # a bucket that is not a number
        f"exposed|onnx|digits|2|b:{BOUNDARY_COUNT + 1}",  # past +Inf
        "exposed|onnx|digits|2|b:-1",
    ],
)
def test_fields_this_codec_does_not_write_are_rejected(name: str) -> None:
    assert parse_field(name) is None


def test_merging_skips_garbage_and_keeps_the_rest() -> None:
    window = merge_hashes(
        "digits",
        10,
        12,
        [
            {b"exposed|onnx|digits|2|a": b"3", b"junk": b"1", b"exposed|onnx|digits|2|r:OK": b"x"},
            {"exposed|onnx|digits|2|a": "-5", "exposed|onnx|digits|2|r:OK": "2"},
        ],
    )
    stats = window.stats[TargetKey("digits", Group.EXPOSED, "onnx", "digits", "2")]
    assert (stats.attempts, dict(stats.errors), stats.histogram) == (3, {"OK": 2}, ())


# -- aggregate -------------------------------------------------------------------------------


def test_aggregate_counts_attempts_results_and_sent_latencies() -> None:
    agg = Aggregator()
    agg.add(100, "digits", "exposed", "onnx", "digits", "2", "OK", 1 * MS)
    agg.add(100, "digits", "exposed", "onnx", "digits", "2", "OK", 1 * MS)
    agg.add(100, "digits", "exposed", "onnx", "digits", "2", "UNAVAILABLE", 3 * MS)
    agg.add(100, "digits", "exposed", "onnx", "digits", "2", "NOT_READY", 0.0, sent=False)
    agg.add(100, "digits", "exposed", "onnx", "digits", "1", "OK", 2 * MS)
    agg.add(101, "digits", "pinned", "onnx", "digits", "1", "OK", 2 * MS)
    ms1, ms2, ms3 = bucket_index(1 * MS), bucket_index(2 * MS), bucket_index(3 * MS)
    assert agg.drain(101) == {
        ("digits", 100): {
            "exposed|onnx|digits|2|a": 4,
            "exposed|onnx|digits|2|r:OK": 2,
            "exposed|onnx|digits|2|r:UNAVAILABLE": 1,
            "exposed|onnx|digits|2|r:NOT_READY": 1,
            f"exposed|onnx|digits|2|b:{ms1}": 2,
            f"exposed|onnx|digits|2|b:{ms3}": 1,
            "exposed|onnx|digits|1|a": 1,
            "exposed|onnx|digits|1|r:OK": 1,
            f"exposed|onnx|digits|1|b:{ms2}": 1,
        }
    }
    assert agg.pending_seconds == 1  # second 101 is still open
    assert agg.drain(101) == {}
    assert agg.drain(None) == {
        ("digits", 101): {
            "pinned|onnx|digits|1|a": 1,
            "pinned|onnx|digits|1|r:OK": 1,
            f"pinned|onnx|digits|1|b:{ms2}": 1,
        }
    }
    assert agg.pending_seconds == 0


def test_a_clock_stepping_back_counts_into_the_open_second() -> None:
    agg = Aggregator()
    agg.add(200, "f", "exposed", "b", "m", "1", "OK", MS)
    agg.add(199, "f", "exposed", "b", "m", "1", "OK", MS)
    batch = agg.drain(None)
    assert list(batch) == [("f", 200)]
    assert batch["f", 200]["exposed|b|m|1|a"] == 2


def test_two_sidecars_merge_exactly_and_p99_comes_from_the_sum() -> None:
    a, b = Aggregator(), Aggregator()
    for _ in range(99):
        a.add(50, "digits", "exposed", "onnx", "digits", "2", "OK", 1 * MS)
    a.add(50, "digits", "exposed", "onnx", "digits", "2", "DEADLINE_EXCEEDED", 100 * MS)
    for _ in range(100):
        b.add(51, "digits", "exposed", "onnx", "digits", "2", "OK", 2 * MS)
    b.add(51, "digits", "shadow", "onnx", "digits", "2", "INTERNAL", 5 * MS)
    hashes: Batch = {}
    add_batches(hashes, a.drain(None))
    add_batches(hashes, b.drain(None))
    window = merge_hashes("digits", 50, 52, list(hashes.values()))
    exposed = window.version("digits", "digits", "2")
    assert exposed.attempts == 200
    assert dict(exposed.errors) == {"OK": 199, "DEADLINE_EXCEEDED": 1}
    assert exposed.failures == 1 and exposed.error_rate == 1 / 200
    assert exposed.histogram == hist(*[1 * MS] * 99, 100 * MS, *[2 * MS] * 100)
    # p99: rank 198 of 200 falls in the 2 ms bucket, 99 of its 100 samples in (99 below it).
    upper = BOUNDARIES[bucket_index(2 * MS)]
    lower = BOUNDARIES[bucket_index(2 * MS) - 1]
    assert exposed.latency_quantile(0.99) == pytest.approx(lower * (upper / lower) ** 0.99)
    assert exposed.latency_quantile(0.99) == quantile(exposed.histogram, 0.99)
    # Shadow traffic is kept apart: it never counts against the served version.
    shadow = window.version("digits", "digits", "2", groups=(Group.SHADOW,))
    assert (shadow.attempts, shadow.failures) == (1, 1)


# -- flusher ---------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_flush_writes_completed_seconds_only_then_the_rest_on_close() -> None:
    clock, writer, agg = Clock(100.5), MemoryWriter(), Aggregator()
    flusher = Flusher(agg, writer, clock=clock)
    agg.add(99, "f", "exposed", "b", "m", "1", "OK", MS)
    agg.add(100, "f", "exposed", "b", "m", "1", "OK", MS)
    assert run(flusher.flush_once()) is True
    assert set(writer.hashes) == {("f", 99)}
    run(flusher.close())
    assert set(writer.hashes) == {("f", 99), ("f", 100)}
    assert writer.writes == 2 and flusher.flushes == 2


def test_nothing_to_write_sends_nothing() -> None:
    writer = MemoryWriter()
    flusher = Flusher(Aggregator(), writer, clock=Clock(5.0))
    assert run(flusher.flush_once()) is True
    assert writer.writes == 0


def test_store_down_keeps_a_bounded_backlog_and_counts_what_it_drops() -> None:
    clock, writer, agg = Clock(1000.0), MemoryWriter(), Aggregator()
    flusher = Flusher(agg, writer, clock=clock, max_backlog=3)
    writer.fail = True
    for second in range(1000, 1005):  # five seconds of 2 attempts each while the store is down
        clock.now = second
        agg.add(second, "f", "exposed", "b", "m", "1", "OK", MS)
        agg.add(second, "f", "exposed", "b", "m", "2", "INTERNAL", MS)
        clock.now = second + 1
        assert run(flusher.flush_once()) is False
    assert flusher.backlog == 3 and flusher.dropped_attempts == 4  # seconds 1000 and 1001
    assert flusher.failures == 5
    writer.fail = False
    assert run(flusher.flush_once()) is True
    assert sorted(writer.hashes) == [("f", 1002), ("f", 1003), ("f", 1004)]
    window = merge_hashes("f", 1000, 1005, list(writer.hashes.values()))
    assert window.version("f", "m", "1").attempts == 3
    assert window.version("f", "m", "2").failures == 3
    assert flusher.backlog == 0


def test_a_retried_batch_merges_with_newer_counts_of_the_same_second() -> None:
    clock, writer, agg = Clock(10.0), MemoryWriter(), Aggregator()
    flusher = Flusher(agg, writer, clock=clock)
    agg.add(9, "f", "exposed", "b", "m", "1", "OK", MS)
    writer.fail = True
    run(flusher.flush_once())
    agg.add(10, "f", "exposed", "b", "m", "1", "OK", MS)
    writer.fail = False
    run(flusher.flush_once(final=True))
    assert writer.hashes["f", 9]["exposed|b|m|1|a"] == 1
    assert writer.hashes["f", 10]["exposed|b|m|1|a"] == 1


def test_a_write_the_acl_refuses_is_dropped_not_retried() -> None:
    clock, writer, agg = Clock(10.0), MemoryWriter(), Aggregator()
    flusher = Flusher(agg, writer, clock=clock)
    agg.add(9, "f", "exposed", "b", "m", "1", "OK", MS)
    agg.add(9, "f", "exposed", "b", "m", "2", "OK", MS)
    writer.refuse = True
    assert run(flusher.flush_once()) is False
    assert (flusher.backlog, flusher.dropped_attempts, flusher.failures) == (0, 2, 1)
    writer.refuse = False  # the ACL is fixed: later seconds are written, the refused ones never
    agg.add(10, "f", "exposed", "b", "m", "1", "OK", MS)
    clock.now = 11.0
    assert run(flusher.flush_once()) is True
    assert list(writer.hashes) == [("f", 10)]


def test_each_failure_episode_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="signals.flusher")
    clock, writer, agg = Clock(10.0), MemoryWriter(), Aggregator()
    flusher = Flusher(agg, writer, clock=clock)
    for refuse, fail in ((True, False),) * 3 + ((False, True),) * 3 + ((False, False),):
        writer.refuse, writer.fail = refuse, fail
        agg.add(int(clock.now), "f", "exposed", "b", "m", "1", "OK", MS)
        clock.now += 1
        run(flusher.flush_once())
    messages = [(r.levelname, r.getMessage().split(" (")[0].split(":")[0]) for r in caplog.records]
    assert messages == [
        ("ERROR", "signals refused by Redis, dropping them until it accepts"),
        ("WARNING", "cannot write signals"),
        ("INFO", "signals written again"),
    ]


def test_backlog_older_than_the_retention_is_dropped_not_written() -> None:
    clock, writer, agg = Clock(101.0), MemoryWriter(), Aggregator()
    flusher = Flusher(agg, writer, clock=clock, retention_s=60)
    agg.add(100, "f", "exposed", "b", "m", "1", "OK", MS)
    writer.fail = True
    run(flusher.flush_once())
    clock.now = 160.0  # second 100 would have expired by now
    writer.fail = False
    assert run(flusher.flush_once()) is True
    assert writer.hashes == {} and flusher.dropped_attempts == 1


@pytest.mark.parametrize(
    "kwargs", [{"interval_s": 0}, {"retention_s": 0}, {"max_backlog": 0}, {"interval_s": -1}]
)
def test_nonsense_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Flusher(Aggregator(), MemoryWriter(), **kwargs)  # type: ignore[arg-type]


def test_window_stats_are_read_only() -> None:
    window = merge_hashes("f", 0, 1, [{"exposed|b|m|1|r:OK": "1", "exposed|b|m|1|a": "1"}])
    stats = next(iter(window.stats.values()))
    assert isinstance(stats.errors, MappingProxyType)
    with pytest.raises(TypeError):
        window.stats[TargetKey("f", Group.EXPOSED, "b", "m", "1")] = stats  # type: ignore[index]
