"""The sidecar's event recording, built from settings: the sink (Redis streams, a JSONL file, or
none), the exposure observer, ``Track`` handling and the Prometheus series that watch them.

Events go to ``--events-redis-url`` (default: ``--redis-url``), else to ``--events-file``; with
neither (or ``--events off``) nothing is recorded and ``Track`` answers FAILED_PRECONDITION.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from experiments.events.model import Outcome
from experiments.events.sinks import BufferedSink, EventKeys, EventSink, FileSink, RedisStreamSink
from experiments.events.validate import InvalidEvent, outcome_from
from flags.store import FlagStore
from sidecar.errors import InvalidRequest, RequestError
from sidecar.exposures import ExposureRecorder, wall_clock_ms
from sidecar.observers import Observer
from sidecar.settings import Settings


class EventsOff(RequestError):
    code = grpc.StatusCode.FAILED_PRECONDITION


@dataclass
class EventRecording:
    store: FlagStore
    sink: EventSink | None
    observers: tuple[Observer, ...] = ()
    clock_ms: Callable[[], int] = field(default=wall_clock_ms)

    @classmethod
    def build(cls, settings: Settings, store: FlagStore) -> EventRecording:
        sink = build_sink(settings)
        if sink is None:
            return cls(store, None)
        recorder = ExposureRecorder(store, sink, capacity=settings.exposure_dedupe_capacity)
        return cls(store, sink, (recorder,))

    def track(
        self,
        *,
        flag: str,
        user_id: str,
        metric: str,
        value: float,
        time_ms: int,
        idempotency_key: str,
    ) -> Outcome:
        """Validate one outcome against the flag as loaded and buffer it (no I/O)."""
        if self.sink is None:
            raise EventsOff(
                "this sidecar records no events: start it with --redis-url (or "
                "--events-redis-url) or --events-file"
            )
        specs = {key: compiled.spec for key, compiled in self.store.snapshot.items()}
        try:
            outcome = outcome_from(
                specs,
                flag=flag,
                user_id=user_id,
                metric=metric,
                value=value,
                time_ms=time_ms,
                idempotency_key=idempotency_key,
                now_ms=self.clock_ms(),
            )
        except InvalidEvent as exc:
            raise InvalidRequest(str(exc)) from exc
        self.sink.record(outcome)
        return outcome

    def watch(self, registry: CollectorRegistry) -> None:
        if isinstance(self.sink, BufferedSink):
            registry.register(_EventsCollector(self.sink))

    async def start(self) -> None:
        if self.sink is not None:
            await self.sink.start()

    async def close(self) -> None:
        if self.sink is not None:
            await self.sink.close()


def build_sink(settings: Settings) -> EventSink | None:
    if settings.events == "off":
        return None
    buffer: dict[str, Any] = {
        "interval_s": settings.events_flush_interval_s,
        "max_buffer": settings.events_max_buffer,
    }
    url = settings.events_redis_url or settings.redis_url
    if url:
        return RedisStreamSink(
            url,
            keys=EventKeys(settings.redis_prefix),
            stream_max_len=settings.events_stream_max_len,
            **buffer,
        )
    if settings.events_file is not None:
        return FileSink(settings.events_file, **buffer)
    return None


class _EventsCollector(Collector):
    def __init__(self, sink: BufferedSink) -> None:
        self._sink = sink

    def collect(self) -> Iterator[Metric]:
        s = self._sink
        yield CounterMetricFamily(
            "trafficsplit_events_dropped",
            "Events dropped because the sidecar's event buffer was full (the destination was "
            "unreachable for too long).",
            value=s.dropped,
        )
        yield CounterMetricFamily(
            "trafficsplit_events_written", "Events written to the event destination.", s.written
        )
        yield CounterMetricFamily(
            "trafficsplit_events_flush_failures",
            "Batches that could not be written (kept and retried).",
            s.failed_flushes,
        )
        yield GaugeMetricFamily(
            "trafficsplit_events_buffered", "Events waiting in the buffer.", len(s.buffer)
        )
        yield GaugeMetricFamily(
            "trafficsplit_events_buffer_capacity", "Buffer bound (events).", s.max_buffer
        )
        if isinstance(s, RedisStreamSink):
            length = GaugeMetricFamily(
                "trafficsplit_events_stream_length",
                "Length of each event stream at the last flush; alert well before "
                "trafficsplit_events_stream_max_length (MAXLEN trims the oldest entries, ingested "
                "or not).",
                labels=("stream",),
            )
            for stream, n in s.stream_lengths.items():
                length.add_metric((stream,), n)
            yield length
            yield GaugeMetricFamily(
                "trafficsplit_events_stream_max_length",
                "The MAXLEN bound of each event stream.",
                s.stream_max_len,
            )
