"""Where recorded events go: a bounded in-memory buffer, flushed in batches off the request path.

``record`` is the only call the request path makes: an append to a deque (no I/O, no await). A
background task flushes the buffer every ``interval_s``: to Redis streams in one pipelined batch
of ``XADD ... MAXLEN ~ bound`` (:class:`RedisStreamSink`), or as JSONL lines appended to a file
(:class:`FileSink`, the embedded default). A failed flush keeps the batch and retries at the next
interval, so a Redis that is briefly away loses nothing; a buffer that reaches ``max_buffer``
drops new events and counts them in ``dropped`` (exported as ``trafficsplit_events_dropped_total``).
A retried batch may have been partly written: ingestion deduplicates (exposures by their natural
key, outcomes by event id), so at-least-once is enough.

Redis layout (prefix ``trafficsplit:`` by default), separate from the flag keys:

=====================================  ======  =============================================
``<prefix>events:exposures``           stream  one entry per exposure: field ``e``, model's wire form
``<prefix>events:outcomes``            stream  one entry per outcome: field ``e``, model's wire form
=====================================  ======  =============================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from redis.exceptions import RedisError

from experiments.events.model import FIELD, Event, Exposure
from flags.redis_conn import async_client, redact

log = logging.getLogger("experiments.events")

DEFAULT_MAX_BUFFER = 100_000
DEFAULT_STREAM_MAX_LEN = 2_000_000
BATCH = 5_000  # events per pipeline round trip


@dataclass(frozen=True, slots=True)
class EventKeys:
    prefix: str = "trafficsplit:"

    @property
    def exposures(self) -> str:
        return f"{self.prefix}events:exposures"

    @property
    def outcomes(self) -> str:
        return f"{self.prefix}events:outcomes"

    def stream_of(self, event: Event) -> str:
        return self.exposures if isinstance(event, Exposure) else self.outcomes


class EventSink(Protocol):
    """What the sidecar records into. ``record`` never blocks and never raises."""

    def record(self, event: Event) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class MemorySink:
    """Keeps events in a list: tests, and a sidecar with nowhere to send them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.dropped = 0

    def record(self, event: Event) -> None:
        self.events.append(event)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class BufferedSink:
    """The bounded buffer and the flush loop; subclasses write one batch in ``_write``."""

    description = "buffer"

    def __init__(self, *, interval_s: float = 0.25, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self.interval_s = interval_s
        self.max_buffer = max_buffer
        self.buffer: deque[Event] = deque()
        self.dropped = 0  # events refused because the buffer was full
        self.written = 0
        self.failed_flushes = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._failing = False

    def record(self, event: Event) -> None:
        if len(self.buffer) >= self.max_buffer:
            self.dropped += 1
            return
        self.buffer.append(event)

    async def _write(self, batch: Sequence[Event]) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"events-{self.description}")

    async def flush(self) -> bool:
        """Write everything buffered now; False (batch kept) if the destination failed."""
        while self.buffer:
            batch = [self.buffer[i] for i in range(min(BATCH, len(self.buffer)))]
            try:
                await self._write(batch)
            except (RedisError, OSError) as exc:
                self.failed_flushes += 1
                if not self._failing:
                    log.warning(
                        "events: cannot write to %s (%s); %d buffered, retrying every %.2fs",
                        self.description, exc, len(self.buffer), self.interval_s,
                    )  # fmt: skip
                self._failing = True
                return False
            for _ in batch:
                self.buffer.popleft()
            self.written += len(batch)
        if self._failing:
            log.info("events: writing to %s again", self.description)
            self._failing = False
        return True

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # a bug must not stop recording for good
                log.exception("events: flush failed")

    async def close(self) -> None:
        """Stop the loop and make one last attempt to write what is buffered."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not await self.flush() and self.buffer:
            log.warning("events: %d events not written at shutdown", len(self.buffer))


class RedisStreamSink(BufferedSink):
    """Batches into Redis streams, each capped with ``MAXLEN ~ stream_max_len``.

    ``stream_lengths`` holds each stream's length after the last flush (one XLEN in the same
    pipeline): the gauge to alert on before the cap trims events nobody ingested yet.
    """

    def __init__(
        self,
        url: str,
        *,
        keys: EventKeys | None = None,
        stream_max_len: int = DEFAULT_STREAM_MAX_LEN,
        client: Any = None,
        **buffer: Any,
    ) -> None:
        super().__init__(**buffer)
        self.keys = keys or EventKeys()
        self.stream_max_len = stream_max_len
        self.description = f"redis {redact(url)}"
        self._client = client or async_client(url)
        self.stream_lengths: dict[str, int] = {self.keys.exposures: 0, self.keys.outcomes: 0}

    async def _write(self, batch: Sequence[Event]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for event in batch:
            pipe.xadd(
                self.keys.stream_of(event),
                {FIELD: event.encode()},
                maxlen=self.stream_max_len,
                approximate=True,
            )
        for stream in self.stream_lengths:
            pipe.xlen(stream)
        replies = await pipe.execute()
        for stream, length in zip(self.stream_lengths, replies[len(batch) :], strict=True):
            self.stream_lengths[stream] = int(length)

    async def close(self) -> None:
        await super().close()
        await self._client.aclose()


class FileSink(BufferedSink):
    """Appends JSONL lines (one event's fields each) to a file: the embedded, Redis-less default.
    ``flagctl experiments ingest --events-file`` reads it."""

    def __init__(self, path: Path, **buffer: Any) -> None:
        super().__init__(**buffer)
        self.path = path
        self.description = f"file {path}"

    async def _write(self, batch: Sequence[Event]) -> None:
        text = "".join(e.encode() + "\n" for e in batch)
        await asyncio.to_thread(self._append, text)

    def _append(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text)
