"""Exposure and outcome events: immutable values, and their one encoding (flat string fields,
used as Redis stream entries and as JSONL lines alike).

An **exposure** says a user in an experiment was served a variant, first seen at ``time_ms``; it
is identified by (experiment, user, variant), so duplicates (another sidecar, a restart) collapse
at ingestion. An **outcome** is one tracked value of a metric for a user; it carries no variant:
it is attributed at analysis time to the variant of the user's exposure, never re-evaluated from
the flag as it is today. Its ``event_id`` (the caller's idempotency key, or a random one) makes
ingestion idempotent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import NamedTuple

EXPOSURE = "exposure"
OUTCOME = "outcome"


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

    @property
    def key(self) -> str:
        """The natural key ingestion deduplicates on."""
        return f"{self.experiment}\x1f{self.user_id}\x1f{self.variant}"

    def fields(self) -> dict[str, str]:
        return {
            "kind": EXPOSURE,
            "experiment": self.experiment,
            "flag": self.flag,
            "user": self.user_id,
            "variant": self.variant,
            "version": self.version,
            "time": str(self.time_ms),
            "segments": json.dumps(dict(self.segments), separators=(",", ":")),
        }


class Outcome(NamedTuple):
    event_id: str
    experiment: str
    flag: str
    user_id: str
    metric: str
    value: float
    time_ms: int

    def fields(self) -> dict[str, str]:
        return {
            "kind": OUTCOME,
            "id": self.event_id,
            "experiment": self.experiment,
            "flag": self.flag,
            "user": self.user_id,
            "metric": self.metric,
            "value": repr(self.value),
            "time": str(self.time_ms),
        }


Event = Exposure | Outcome


def _text(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value:
        raise EventDecodeError(f"missing field {name!r}")
    return value


def decode(fields: Mapping[str, str]) -> Event:
    """An event from its fields (a stream entry decoded to text, or a JSONL object).
    Raises EventDecodeError for anything that is not a well-formed event."""
    try:
        kind = fields.get("kind")
        time_ms = int(_text(fields, "time"))
        if kind == EXPOSURE:
            segments = json.loads(fields.get("segments") or "{}")
            if not isinstance(segments, dict):
                raise EventDecodeError("segments: not an object")
            return Exposure(
                experiment=_text(fields, "experiment"),
                flag=_text(fields, "flag"),
                user_id=_text(fields, "user"),
                variant=_text(fields, "variant"),
                version=fields.get("version") or "",
                time_ms=time_ms,
                segments=tuple(sorted((str(k), str(v)) for k, v in segments.items())),
            )
        if kind == OUTCOME:
            value = float(_text(fields, "value"))
            if not math.isfinite(value):
                raise EventDecodeError("value: not a finite number")
            return Outcome(
                event_id=_text(fields, "id"),
                experiment=_text(fields, "experiment"),
                flag=_text(fields, "flag"),
                user_id=_text(fields, "user"),
                metric=_text(fields, "metric"),
                value=value,
                time_ms=time_ms,
            )
    except (ValueError, TypeError) as exc:  # int()/float()/json of garbage
        if isinstance(exc, EventDecodeError):
            raise
        raise EventDecodeError(str(exc)) from exc
    raise EventDecodeError(f"unknown kind {kind!r}")
