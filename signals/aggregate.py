"""The in-memory aggregate a sidecar records into on the request path (pure: no I/O, no clock).

One cell per (flag, group, backend, model, version) for the current second: an attempt count,
counts by result, and a sparse latency histogram (bucket index → count). Recording is a dict
lookup and three increments, so it costs about a microsecond whatever the request rate;
:meth:`Aggregator.drain` turns completed seconds into a :data:`~signals.codec.Batch` of hash
fields, off the request path.

Not thread-safe: record and drain from one thread (the sidecar's event loop).
"""

from __future__ import annotations

from signals.codec import ATTEMPTS, BUCKET, RESULT, Batch, target_prefix
from signals.latency import bucket_index

CellKey = tuple[str, str, str, str, str]  # flag, group, backend, model, version


class Cell:
    """Counts for one target in one second."""

    __slots__ = ("attempts", "buckets", "results")

    def __init__(self) -> None:
        self.attempts = 0
        self.results: dict[str, int] = {}
        self.buckets: dict[int, int] = {}


class Aggregator:
    """Counts of the current second plus the completed seconds not yet drained."""

    __slots__ = ("_cells", "_done", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._cells: dict[CellKey, Cell] = {}
        self._done: list[tuple[int, dict[CellKey, Cell]]] = []

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
        """Count one attempt that ended in ``second`` (unix time). A clock stepping back counts
        into the current second rather than reopening a drained one."""
        if second > self._second:
            self._roll(second)
        key = (flag, group, backend, model, version)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = Cell()
        cell.attempts += 1
        results = cell.results
        results[result] = results.get(result, 0) + 1
        if sent:
            index = bucket_index(seconds)
            buckets = cell.buckets
            buckets[index] = buckets.get(index, 0) + 1

    def _roll(self, second: int) -> None:
        if self._cells:
            self._done.append((self._second, self._cells))
            self._cells = {}
        self._second = second

    @property
    def pending_seconds(self) -> int:
        """Seconds recorded and not drained yet (the current one included)."""
        return len(self._done) + (1 if self._cells else 0)

    def drain(self, before_second: int | None) -> Batch:
        """Remove and encode every second before ``before_second`` (None: all of them, the
        current one included, as on shutdown)."""
        if before_second is None or before_second > self._second:
            self._roll(max(self._second, before_second or 0))
        done, self._done = self._done, []
        batch: Batch = {}
        for second, cells in done:
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
        return batch
