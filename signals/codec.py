"""How signals are laid out in Redis: key names, hash fields, and merging hashes into a Window.

Pure: no I/O, no clock. One Redis hash per (flag, unix second), written with HINCRBY by every
sidecar, so the counts of the whole fleet add up in Redis itself::

    <prefix>sig:<flag>:<unix_second>          hash, expires after the longest window

    field                                     value
    <group>|<backend>|<model>|<version>|a     attempts (sent or skipped)
    <group>|<backend>|<model>|<version>|r:OK  attempts with that result (one field per result)
    <group>|<backend>|<model>|<version>|b:17  sent attempts whose duration fell in bucket 17 of
                                              signals.latency.BOUNDARIES (sparse: only non-zero)

``|`` and ``%`` inside a name are percent-escaped, so any model or backend name round-trips.
Decoding skips fields it does not understand (a newer writer, a hand edit) rather than failing:
a reader must never crash on what it finds in Redis.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from signals.latency import BOUNDARY_COUNT
from signals.model import HISTOGRAM_SIZE, Group, TargetKey, VersionStats, Window

SEPARATOR = "|"
ATTEMPTS = "a"
RESULT = "r:"
BUCKET = "b:"

# (flag, second) → field → count: what one flush adds to Redis.
Batch = dict[tuple[str, int], dict[str, int]]

_GROUPS = {g.value: g for g in Group}


def signal_key(prefix: str, flag: str, second: int) -> str:
    """The hash holding ``flag``'s signals for one unix ``second``."""
    return f"{prefix}sig:{flag}:{second}"


def signal_pattern(prefix: str) -> str:
    """The key pattern of every signal hash (for ACL rules and SCAN)."""
    return f"{prefix}sig:*"


def escape(name: str) -> str:
    if "%" in name or SEPARATOR in name:
        return name.replace("%", "%25").replace(SEPARATOR, "%7C")
    return name


def unescape(name: str) -> str:
    if "%" in name:
        return name.replace("%7C", SEPARATOR).replace("%25", "%")
    return name


def target_prefix(group: str, backend: str, model: str, version: str) -> str:
    """``group|backend|model|version|``: the start of every field of one target."""
    return SEPARATOR.join((escape(group), escape(backend), escape(model), escape(version), ""))


@dataclass(frozen=True, slots=True)
class Field:
    """One decoded hash field: which target it belongs to and what it counts."""

    group: Group
    backend: str
    model: str
    version: str
    kind: str  # ATTEMPTS, RESULT or BUCKET
    detail: str  # the result name, or the bucket index as text; "" for attempts


def parse_field(name: str) -> Field | None:
    """The field ``name``, or None if it is not one this codec writes."""
    parts = name.split(SEPARATOR)
    if len(parts) != 5:
        return None
    group = _GROUPS.get(unescape(parts[0]))
    if group is None:
        return None
    last = parts[4]
    if last == ATTEMPTS:
        kind, detail = ATTEMPTS, ""
    elif last.startswith(RESULT) and len(last) > len(RESULT):
        kind, detail = RESULT, last[len(RESULT) :]
    elif last.startswith(BUCKET):
        kind, detail = BUCKET, last[len(BUCKET) :]
        if not detail.isdigit() or int(detail) > BOUNDARY_COUNT:
            return None
    else:
        return None
    return Field(group, unescape(parts[1]), unescape(parts[2]), unescape(parts[3]), kind, detail)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _count(value: bytes | str | int) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class _Accumulator:
    """Mutable sums for one target while merging; frozen into a VersionStats at the end."""

    __slots__ = ("attempts", "histogram", "results")

    def __init__(self) -> None:
        self.attempts = 0
        self.results: dict[str, int] = {}
        self.histogram: list[int] | None = None

    def freeze(self) -> VersionStats:
        return VersionStats(
            self.attempts,
            MappingProxyType(dict(self.results)),
            tuple(self.histogram) if self.histogram is not None else (),
        )


def merge_hashes(
    flag: str, start_s: int, end_s: int, hashes: Iterable[Mapping[bytes, bytes] | Mapping[str, str]]
) -> Window:
    """One Window from the raw hashes of ``flag``'s seconds in ``[start_s, end_s)``: every
    count of every second of every sidecar added up (exact: counts and buckets are integers)."""
    sums: dict[TargetKey, _Accumulator] = {}
    for raw in hashes:
        for raw_name, raw_value in raw.items():
            parsed = parse_field(_text(raw_name))
            count = _count(raw_value)
            if parsed is None or count is None or count < 0:
                continue  # not ours: skip it, never fail the whole window
            key = TargetKey(flag, parsed.group, parsed.backend, parsed.model, parsed.version)
            acc = sums.get(key)
            if acc is None:
                acc = sums[key] = _Accumulator()
            if parsed.kind == ATTEMPTS:
                acc.attempts += count
            elif parsed.kind == RESULT:
                acc.results[parsed.detail] = acc.results.get(parsed.detail, 0) + count
            else:
                if acc.histogram is None:
                    acc.histogram = [0] * HISTOGRAM_SIZE
                acc.histogram[int(parsed.detail)] += count
    stats = {key: acc.freeze() for key, acc in sums.items()}
    return Window(start_s, end_s, MappingProxyType(stats))


def add_batches(into: Batch, other: Batch) -> None:
    """Add ``other``'s counts to ``into`` (a batch that failed to write, merged with a newer one)."""
    for key, fields in other.items():
        target = into.get(key)
        if target is None:
            into[key] = dict(fields)
            continue
        for name, count in fields.items():
            target[name] = target.get(name, 0) + count


def batch_attempts(fields: Mapping[str, int]) -> int:
    """How many attempts one (flag, second) of a batch holds (what dropping it loses)."""
    return sum(count for name, count in fields.items() if name.endswith(SEPARATOR + ATTEMPTS))
