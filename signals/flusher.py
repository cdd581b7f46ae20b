"""Moves completed seconds from the in-memory aggregate to a store, once per interval.

The request path only logs into an :class:`~signals.aggregate.Aggregator`; this task, on the
same event loop, takes the seconds that are over, counts them (in slices, yielding the loop in
between) and hands them to a :class:`BatchWriter` in one write (one pipelined round trip to Redis), so the store's write load depends on the number of
flags, targets and latency buckets in use, never on the request rate.

When the store is unavailable, batches stay in a bounded backlog and are retried (merged with the
newer ones: counts add) at the next interval. Beyond ``max_backlog`` (flag, second) entries, the
oldest are dropped, and so is anything older than the retention (its key would already have
expired). A write refused by the ACL is dropped at once, never retried. ``dropped_attempts``
counts what was lost. Nothing here ever blocks a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from flags.errors import StoreAuthError
from signals.aggregate import Aggregator, encode_steps
from signals.codec import Batch, add_batches, batch_attempts

log = logging.getLogger("signals.flusher")

DEFAULT_INTERVAL_S = 1.0
DEFAULT_RETENTION_S = 960  # the longest guardrail window (15 min) plus a minute of margin
DEFAULT_MAX_BACKLOG = 900  # (flag, second) entries: 15 minutes of one flag


class BatchWriter(Protocol):
    """Adds a batch's counts to the store in one write; raises if it could not."""

    async def write(self, batch: Batch) -> int:
        """Returns the number of store commands sent (for benchmarks)."""
        ...


class Flusher:
    def __init__(
        self,
        aggregator: Aggregator,
        writer: BatchWriter,
        *,
        clock: Callable[[], float] = time.time,
        interval_s: float = DEFAULT_INTERVAL_S,
        retention_s: int = DEFAULT_RETENTION_S,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
    ) -> None:
        if interval_s <= 0 or retention_s <= 0 or max_backlog < 1:
            raise ValueError("interval_s and retention_s must be > 0 and max_backlog >= 1")
        self.aggregator = aggregator
        self._writer = writer
        self._clock = clock
        self.interval_s = interval_s
        self.retention_s = retention_s
        self.max_backlog = max_backlog
        self._backlog: Batch = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._failing = ""  # "", "unavailable" or "refused": log each episode once
        self.dropped_attempts = 0
        self.flushes = 0  # writes that succeeded
        self.failures = 0  # writes that failed (their batch stayed in the backlog)
        self.commands = 0  # store commands sent by successful writes

    @property
    def backlog(self) -> int:
        """(flag, second) entries waiting for the store."""
        return len(self._backlog)

    async def flush_once(self, *, final: bool = False) -> bool:
        """Drain completed seconds (all of them if ``final``) and write them with the backlog.
        Returns True if nothing is left waiting."""
        async with self._lock:
            now = int(self._clock())
            fresh: Batch = {}
            for _ in encode_steps(self.aggregator.take(None if final else now), fresh):
                await asyncio.sleep(0)  # give requests the loop between slices of counting
            add_batches(self._backlog, fresh)
            self._trim(now)
            if not self._backlog:
                return True
            pending, self._backlog = self._backlog, {}
            try:
                self.commands += await self._writer.write(pending)
            except StoreAuthError as exc:
                # Configuration, not an outage: retrying cannot help, and a user refused MULTI
                # has had its HINCRBYs applied outside the transaction, so a retry would count
                # them twice. Drop the batch; later ones are written once the ACL is fixed.
                self.failures += 1
                self.dropped_attempts += sum(batch_attempts(f) for f in pending.values())
                if self._failing != "refused":  # once per episode, not once a second
                    log.error("signals refused by Redis, dropping them until it accepts: %s", exc)
                self._failing = "refused"
                return False
            except Exception as exc:  # an outage: keep the counts, retry next interval
                add_batches(pending, self._backlog)
                self._backlog = pending
                self._trim(now)
                self.failures += 1
                if self._failing != "unavailable":
                    log.warning("cannot write signals (%s); keeping up to %d seconds, retrying "
                                "every %.1fs", exc, self.max_backlog, self.interval_s)  # fmt: skip
                self._failing = "unavailable"
                return False
            self.flushes += 1
            if self._failing:
                log.info("signals written again")
                self._failing = ""
            return True

    def _trim(self, now: int) -> None:
        oldest_kept = now - self.retention_s
        expired = [key for key in self._backlog if key[1] <= oldest_kept]
        excess = len(self._backlog) - len(expired) - self.max_backlog
        if excess > 0:
            live = sorted((key for key in self._backlog if key[1] > oldest_kept),
                          key=lambda k: k[1])  # fmt: skip
            expired.extend(live[:excess])
        for key in expired:
            self.dropped_attempts += batch_attempts(self._backlog.pop(key))

    def start(self) -> None:
        """Flush every ``interval_s`` on the running event loop until :meth:`close`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="signals-flush")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)  # the flush interval, not synchronisation
            try:
                await self.flush_once()
            except Exception:  # a bug here must not stop flushing for good
                log.exception("signals flush failed")

    async def close(self, *, timeout: float = 2.0) -> None:
        """Stop the loop and write what is left, the current second included (bounded)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.flush_once(final=True)
