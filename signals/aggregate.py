"""The in-memory aggregate a sidecar records into on the request path (pure: no I/O, no clock).

Recording must cost well under 2 µs a request, so the request path does the least possible: it
appends ``(flag, group, attempts)`` to the current second's log (the attempts are the router's
immutable values, kept by reference). Counting happens when the flush task takes the completed
seconds (:meth:`Aggregator.take`) and encodes them (:func:`encode_steps`): one cell per
(flag, group, backend, model, version) with an attempt count, counts by result, and a sparse
latency histogram over :data:`signals.latency.BOUNDARIES`. Encoding yields every few hundred
entries so the flush task can give the event loop back between slices.

Not thread-safe: record, take and encode on one thread (the sidecar's event loop).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from signals.codec import ATTEMPTS, BUCKET, RESULT, Batch, target_prefix
from signals.latency import bucket_index

ENCODE_SLICE = 500  # log entries encoded between two yields to the event loop


class AttemptLike(Protocol):
    """One attempt on a target, as the sidecar's ``Attempt`` (or a :class:`Sample`) holds it."""

    @property
    def backend(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def result(self) -> str: ...
    @property
    def seconds(self) -> float: ...
    @property
    def sent(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Sample:
    """An attempt made outside the router (a shadow call), or one a test or benchmark makes up."""

    backend: str
    model: str
    version: str
    result: str
    seconds: float
    sent: bool = True


Entry = tuple[str, str, Sequence[AttemptLike]]  # flag, group, attempts of one request
Taken = list[tuple[int, list[Entry]]]  # completed seconds and their logs


class Aggregator:
    """The log of the current second plus the completed seconds not taken yet."""

    __slots__ = ("_done", "_log", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._log: list[Entry] = []
        self._done: Taken = []

    def add_attempts(
        self, second: int, flag: str, group: str, attempts: Sequence[AttemptLike]
    ) -> None:
        """Record one request's attempts, ended in unix ``second`` (the request path's call).
        A clock stepping back records into the open second rather than reopening a taken one."""
        if second > self._second:
            self._roll(second)
        self._log.append((flag, group, attempts))

    def add(
        self,
        second: int,
        flag: str,
        group: str,
        backend: str,
        model: str,
        version: str,
        result: str,
        seconds: float,
        sent: bool = True,
    ) -> None:
        """Record one attempt given field by field."""
        sample = Sample(backend, model, version, result, seconds, sent)
        self.add_attempts(second, flag, group, (sample,))

    def _roll(self, second: int) -> None:
        if self._log:
            self._done.append((self._second, self._log))
            self._log = []
        self._second = second

    @property
    def pending_seconds(self) -> int:
        """Seconds recorded and not taken yet (the open one included)."""
        return len(self._done) + (1 if self._log else 0)

    def take(self, before_second: int | None) -> Taken:
        """Remove every second before ``before_second`` (None: all of them, the open one too,
        as on shutdown)."""
        if before_second is None or before_second > self._second:
            self._roll(max(self._second, before_second or 0))
        done, self._done = self._done, []
        return done

    def drain(self, before_second: int | None) -> Batch:
        """:meth:`take` and encode in one go (tests, benchmarks)."""
        batch: Batch = {}
        for _ in encode_steps(self.take(before_second), batch):
            pass
        return batch


class _Cell:
    __slots__ = ("attempts", "buckets", "results")

    def __init__(self) -> None:
        self.attempts = 0
        self.results: dict[str, int] = {}
        self.buckets: dict[int, int] = {}


def encode_steps(taken: Taken, batch: Batch) -> Iterator[None]:
    """Count ``taken`` into ``batch``'s hash fields, yielding every :data:`ENCODE_SLICE`
    entries (the caller may give the event loop back at each yield)."""
    done = 0
    for second, entries in taken:
        cells: dict[tuple[str, str, str, str, str], _Cell] = {}
        for flag, group, attempts in entries:
            for t in attempts:
                key = (flag, group, t.backend, t.model, t.version)
                cell = cells.get(key)
                if cell is None:
                    cell = cells[key] = _Cell()
                cell.attempts += 1
                cell.results[t.result] = cell.results.get(t.result, 0) + 1
                if t.sent:
                    index = bucket_index(t.seconds)
                    cell.buckets[index] = cell.buckets.get(index, 0) + 1
            done += 1
            if done % ENCODE_SLICE == 0:
                yield
        for (flag, group, backend, model, version), cell in cells.items():
            fields = batch.setdefault((flag, second), {})
            start = target_prefix(group, backend, model, version)
            fields[start + ATTEMPTS] = fields.get(start + ATTEMPTS, 0) + cell.attempts
            for result, n in cell.results.items():
                name = f"{start}{RESULT}{result}"
                fields[name] = fields.get(name, 0) + n
            for index, n in cell.buckets.items():
                name = f"{start}{BUCKET}{index}"
                fields[name] = fields.get(name, 0) + n
