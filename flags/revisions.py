"""Epoch revisions: a flag's revision never goes backwards, even after Redis loses its data.

A revision is ``epoch << 10 | n``: ``epoch`` is the Unix time in milliseconds at which the
current epoch began (kept in Redis under ``<prefix>epoch``), ``n`` counts writes since. When the epoch key is missing
(a Redis that lost its data: FLUSHALL, restart without persistence, failover to an empty replica)
the next write starts a new epoch from the Redis server's ``TIME``; as time has moved on since the
old epoch began, every revision of the new epoch orders after every revision of the old one.

Every write takes ``max(current + 1, epoch << 10 | 1)``, so revisions also grow across epochs for
a flag that survived the loss, and legacy small revisions (hand-written, or from before epochs)
are simply overtaken. Past 1,023 writes in one epoch ``n`` carries into the epoch bits: ordering
still holds as long as one flag averages fewer than 1,024 writes per millisecond (a compare-and-set
round trip takes far longer), but ``flagctl`` then shows a later epoch time than the real one.

Bounds: revisions stay below :data:`flags.schema.MAX_REVISION` (2^53 - 1, exact as a float) until
the year 2248; a write that would pass it (only reachable with a hand-written revision near the
limit) fails with a clear message instead of overflowing, and ``flagctl apply --force`` restarts
the flag's numbering from the current epoch. A loss within the millisecond its epoch began would
reuse that millisecond (not a practical case).
"""

from __future__ import annotations

from datetime import UTC, datetime

EPOCH_BITS = 10
_COUNT_MASK = (1 << EPOCH_BITS) - 1
# Revisions at or above this are epoch revisions (epochs begin after 2001-09-09).
_FIRST_EPOCH = 1_000_000_000_000 << EPOCH_BITS


def next_revision(current: int | None, epoch: int) -> int:
    """The revision a write stores over ``current`` (None: a new flag) in epoch ``epoch``."""
    return max((current or 0) + 1, (epoch << EPOCH_BITS) + 1)


def describe(revision: int | None) -> str:
    """A revision for humans: ``1807…459 (epoch 2026-11-25T15:49:18.123Z #3)``, or the number."""
    if revision is None:
        return "-"
    if revision < _FIRST_EPOCH:
        return str(revision)
    epoch, count = revision >> EPOCH_BITS, revision & _COUNT_MASK
    began = datetime.fromtimestamp(epoch / 1000, UTC).isoformat(timespec="milliseconds")
    began = began.replace("+00:00", "Z")
    return f"{revision} (epoch {began} #{count})"
