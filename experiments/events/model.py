"""Exposure and outcome events: immutable values, and their one encoding (a compact JSON array,
used as the single field ``e`` of a Redis stream entry and as a line of a JSONL events file).

An **exposure** says a user in an experiment was served a variant, first seen at ``time_ms``; it
is identified by (experiment, user, variant), so duplicates (another sidecar, a restart) collapse
at ingestion. An **outcome** is one tracked value of a metric for a user; it carries no variant:
it is attributed at analysis time to the variant of the user's exposure, never re-evaluated from
the flag as it is today. Its ``event_id`` (the caller's idempotency key, or a random one) makes
ingestion idempotent.

Wire format (positional, so each entry carries no field names; the first element is the kind)::

    ["x", experiment, flag, user, variant, version, time_ms, {segment: value}, split]
    ["o", event_id, experiment, flag, user, metric, value, time_ms]

One field and one JSON string per entry keeps the sidecar's batched write cheap (redis-py packs
each argument in Python) and Redis small (~90 bytes an entry).
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

EXPOSURE = "x"
OUTCOME = "o"
FIELD = "e"  # the one field of a stream entry


class EventDecodeError(ValueError):
    """A stored event that is not one of ours (hand-written, truncated, another version)."""


class Exposure(NamedTuple):
    """Immutable (a NamedTuple: built on the request path, 4x cheaper than a frozen dataclass)."""

    experiment: str
    flag: str
    user_id: str
    variant: str
    version: str  # the model version that served (the default's, after a fallback)
    time_ms: int  # first seen by this sidecar, Unix milliseconds
    segments: tuple[tuple[str, str], ...] = ()  # the plan's segment attributes, as sent
    split: str = ""  # the split that chose the variant, "control=80,candidate=20": SRM phases

    @property
    def key(self) -> str:
        """The natural key ingestion deduplicates on."""
        return f"{self.experiment}\x1f{self.user_id}\x1f{self.variant}"

    def encode(self) -> str:
        return json.dumps(
            [EXPOSURE, self.experiment, self.flag, self.user_id, self.variant, self.version,
             self.time_ms, dict(self.segments), self.split],
            separators=(",", ":"),
        )  # fmt: skip


class Outcome(NamedTuple):
    event_id: str
    experiment: str
    flag: str
    user_id: str
    metric: str
    value: float
    time_ms: int

    def encode(self) -> str:
        return json.dumps(
            [OUTCOME, self.event_id, self.experiment, self.flag, self.user_id, self.metric,
             self.value, self.time_ms],
            separators=(",", ":"),
        )  # fmt: skip


Event = Exposure | Outcome


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise EventDecodeError(f"{name}: expected a non-empty string")
    return value


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventDecodeError(f"{name}: expected an integer")
    return value


def decode(text: str | bytes) -> Event:
    """An event from its wire form. Raises EventDecodeError for anything that is not a
    well-formed event (hand-written entries, truncated lines, another format)."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventDecodeError(f"not JSON: {exc}") from exc
    if not isinstance(data, list) or len(data) not in (8, 9):
        raise EventDecodeError("expected a JSON array of 8 or 9 elements")
    kind = data[0]
    if kind == EXPOSURE:
        if len(data) == 8:
            data.append("")  # before splits were recorded
        segments = data[7]
        if not isinstance(segments, dict):
            raise EventDecodeError("segments: expected an object")
        return Exposure(
            experiment=_text(data[1], "experiment"),
            flag=_text(data[2], "flag"),
            user_id=_text(data[3], "user"),
            variant=_text(data[4], "variant"),
            version=data[5] if isinstance(data[5], str) else "",
            time_ms=_int(data[6], "time"),
            segments=tuple(sorted((str(k), str(v)) for k, v in segments.items())),
            split=data[8] if isinstance(data[8], str) else "",
        )
    if kind == OUTCOME:
        if len(data) != 8:
            raise EventDecodeError("an outcome has 8 elements")
        value = data[6]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EventDecodeError("value: expected a number")
        if not math.isfinite(value):
            raise EventDecodeError("value: not a finite number")
        return Outcome(
            event_id=_text(data[1], "id"),
            experiment=_text(data[2], "experiment"),
            flag=_text(data[3], "flag"),
            user_id=_text(data[4], "user"),
            metric=_text(data[5], "metric"),
            value=float(value),
            time_ms=_int(data[7], "time"),
        )
    raise EventDecodeError(f"unknown kind {kind!r}")
