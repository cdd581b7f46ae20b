"""Where flags live in Redis. One place, documented in docs/flags.md ("Redis key layout").

With the default prefix ``trafficsplit:``:

=============================  ==========  ==============================================
``trafficsplit:flag:<key>``    string      the flag's JSON document (what ``flagctl`` writes)
``trafficsplit:flags``         set         the keys of all flags (reconcile reads this index)
``trafficsplit:changes``       pub/sub     ``{"key": ..., "revision": ...}`` after each write
``trafficsplit:audit:<key>``   stream      one entry per change: who, when, what, why
``trafficsplit:deleted:<key>`` string      tombstone of a ``flagctl delete``: JSON revision/at/by/reason
``trafficsplit:epoch``         string      revision epoch base (see :mod:`flags.revisions`)
=============================  ==========  ==============================================

A flag missing from the index or without a document is removed by sidecars only if its tombstone
exists; otherwise it is data loss and the last good version keeps serving.

For Redis Cluster, use a prefix with a hash tag (``{trafficsplit}:``) so that a flag, the index
and its audit stream share a slot, as the compare-and-set script requires.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "trafficsplit:"


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str = DEFAULT_PREFIX

    def flag(self, key: str) -> str:
        return f"{self.prefix}flag:{key}"

    def audit(self, key: str) -> str:
        return f"{self.prefix}audit:{key}"

    def tombstone(self, key: str) -> str:
        return f"{self.prefix}deleted:{key}"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}epoch"

    @property
    def index(self) -> str:
        return f"{self.prefix}flags"

    @property
    def channel(self) -> str:
        return f"{self.prefix}changes"

    def key_of(self, redis_key: str) -> str:
        """The flag key of ``<prefix>flag:<key>``."""
        return redis_key.removeprefix(self.flag(""))
