"""Moving events into the store: from Redis streams (then trimmed) or from a JSONL events file.

At-least-once and idempotent: a chunk is committed to DuckDB first and trimmed from Redis after,
so a crash in between only means the chunk is read again next time, and the store's keys make
that a no-op. Entries that are not well-formed events are counted, logged once and skipped
(trimmed with the rest: they could never be ingested).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.events.model import FIELD, Event, EventDecodeError, decode
from experiments.events.sinks import EventKeys
from experiments.store import ExperimentStore

log = logging.getLogger("experiments.ingest")
CHUNK = 20_000
FIELD_BYTES = FIELD.encode()


@dataclass
class IngestReport:
    read: int = 0
    exposures_added: int = 0
    outcomes_added: int = 0
    malformed: int = 0
    trimmed: int = 0
    sources: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "exposures_added": self.exposures_added,
            "outcomes_added": self.outcomes_added,
            "malformed": self.malformed,
            "trimmed": self.trimmed,
            "sources": self.sources,
        }


def _next_id(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _payload(fields: dict[Any, Any]) -> str | bytes:
    """The event of a stream entry: its one field ``e`` (bytes, or text if the client decodes)."""
    value = fields.get(FIELD_BYTES, fields.get(FIELD))
    if value is None:
        raise EventDecodeError(f"no field {FIELD!r}")
    return value  # type: ignore[no-any-return]


def ingest_redis(
    store: ExperimentStore,
    client: Any,
    keys: EventKeys,
    *,
    trim: bool = True,
    chunk: int = CHUNK,
    report: IngestReport | None = None,
    on_chunk: Callable[[IngestReport], None] | None = None,
) -> IngestReport:
    """Read both event streams to their end now, add each chunk to the store, then trim it."""
    report = report or IngestReport()
    for stream in (keys.exposures, keys.outcomes):
        report.sources.append(stream)
        start = "-"
        while True:
            entries = client.xrange(stream, min=start, max="+", count=chunk)
            if not entries:
                break
            events: list[Event] = []
            for _entry_id, fields in entries:
                try:
                    events.append(decode(_payload(fields)))
                except EventDecodeError as exc:
                    report.malformed += 1
                    if report.malformed == 1:
                        log.warning("skipping a malformed entry of %s: %s", stream, exc)
            _add(store, events, report, len(entries))
            last = _text(entries[-1][0])
            if trim:
                report.trimmed += int(client.xtrim(stream, minid=_next_id(last), approximate=False))
            start = f"({last}"
            if on_chunk is not None:
                on_chunk(report)
    return report


def ingest_file(
    store: ExperimentStore, path: Path, *, chunk: int = CHUNK, report: IngestReport | None = None
) -> IngestReport:
    """Read a JSONL events file (a sidecar's ``--events-file``) from where the last ingestion
    stopped; a partly written last line is left for next time."""
    report = report or IngestReport()
    source = f"file:{path.resolve()}"
    report.sources.append(str(path))
    position = store.position(source)
    if position > path.stat().st_size:  # the file was replaced or truncated: start over
        position = 0
    with path.open("rb") as f:
        f.seek(position)
        while True:
            lines = f.readlines(chunk * 200)
            if not lines:
                break
            partial = not lines[-1].endswith(b"\n")
            if partial:
                lines.pop()  # being written: read it next time
            events: list[Event] = []
            for line in lines:
                position += len(line)
                try:
                    events.append(decode(line))
                except EventDecodeError as exc:
                    report.malformed += 1
                    if report.malformed == 1:
                        log.warning("skipping a malformed line of %s: %s", path, exc)
            _add(store, events, report, len(lines))
            store.set_position(source, position)
            if partial:
                break
    return report


def _add(store: ExperimentStore, events: list[Event], report: IngestReport, read: int) -> None:
    added = store.add(events)
    report.read += read
    report.exposures_added += added.exposures
    report.outcomes_added += added.outcomes
