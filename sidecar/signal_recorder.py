"""Records every attempt of every flagged request into fleet-wide signals (see docs/rollouts.md).

:class:`SignalRecorder` is an observer: in ``on_settled`` it counts each attempt of the outcome
against the target that was *attempted*, in the request's group (its membership), in the current
second: it appends the outcome's immutable attempts to the current second's log (a few hundred
nanoseconds); counting happens in the flush task. A :class:`~signals.flusher.Flusher` on the
event loop writes completed seconds to Redis once per interval in one pipelined write. Requests to
models without a flag are not recorded: nothing decides anything about them.

Other observers (shadow traffic) call :meth:`SignalRecorder.record` with group ``shadow``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from flags.redis_conn import async_client
from sidecar.metrics import SidecarMetrics
from sidecar.observers import Exchange, Observer
from sidecar.outcome import RequestOutcome
from sidecar.settings import Settings
from signals.aggregate import Aggregator, Sample
from signals.flusher import BatchWriter, Flusher
from signals.redis_window import RedisSignalWriter


class SignalRecorder(Observer):
    def __init__(
        self,
        writer: BatchWriter,
        *,
        clock: Callable[[], float] = time.time,
        interval_s: float = 1.0,
        retention_s: int = 960,
        max_backlog: int = 900,
    ) -> None:
        self._aggregator = Aggregator()
        self._add = self._aggregator.add_attempts
        self._clock = clock
        self.writer = writer
        self.flusher = Flusher(
            self._aggregator,
            writer,
            clock=clock,
            interval_s=interval_s,
            retention_s=retention_s,
            max_backlog=max_backlog,
        )

    def on_settled(self, exchange: Exchange, outcome: RequestOutcome) -> None:
        plan = outcome.assignment.plan
        if plan.flag:  # unflagged traffic: nothing decides anything about it
            # membership is a StrEnum: the group's name as it is (``.value`` costs 150 ns)
            self._add(int(self._clock()), plan.flag, plan.membership, outcome.attempts)

    def record(
        self,
        flag: str,
        group: str,
        backend: str,
        model: str,
        version: str,
        result: str,
        seconds: float,
        sent: bool = True,
    ) -> None:
        """Count one attempt made outside the router (shadow calls: ``group="shadow"``).
        Call it from the event loop's thread."""
        sample = Sample(backend, model, version, result, seconds, sent)
        self._add(int(self._clock()), flag, group, (sample,))

    def start(self) -> None:
        self.flusher.start()

    async def close(self) -> None:
        """Flush the last (partial) second, then release the Redis connection."""
        await self.flusher.close()
        close = getattr(self.writer, "close", None)
        if close is not None:
            await close()


class _SignalCollector(Collector):
    """The flusher's counters, read at scrape time (nothing pushed from the request path)."""

    def __init__(self, flusher: Flusher) -> None:
        self._flusher = flusher

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        f = self._flusher
        yield CounterMetricFamily(
            "trafficsplit_signal_dropped",
            "Attempts recorded but never written to Redis (the backlog overflowed while Redis "
            "was unavailable, or they outlived the retention).",
            value=f.dropped_attempts,
        )
        yield CounterMetricFamily(
            "trafficsplit_signal_flush_failures",
            "Signal writes to Redis that failed (their counts stayed in the backlog).",
            value=f.failures,
        )
        yield GaugeMetricFamily(
            "trafficsplit_signal_backlog",
            "(flag, second) entries of signals waiting for Redis.",
            value=f.backlog,
        )


def build_signal_recorder(settings: Settings, metrics: SidecarMetrics) -> SignalRecorder | None:
    """The recorder when Redis is configured and signals are on; None otherwise."""
    url = settings.signals_redis_url or settings.redis_url
    if not url or settings.signals_interval_s <= 0:
        return None
    writer = RedisSignalWriter(
        async_client(url),
        settings.redis_prefix,
        retention_s=settings.signals_retention_s,
        url=url,  # only ever shown redacted
    )
    recorder = SignalRecorder(
        writer,
        interval_s=settings.signals_interval_s,
        retention_s=settings.signals_retention_s,
        max_backlog=settings.signals_max_backlog,
    )
    metrics.registry.register(_SignalCollector(recorder.flusher))
    return recorder
