"""Signals in Redis: the writer sidecars flush with, the reader controllers merge windows with.

Thin adapter over :mod:`signals.codec` (key layout and fields are documented there and in
docs/rollouts.md). The writer sends one MULTI/EXEC pipeline per flush: HINCRBY per field, EXPIRE
per key; all of it applies or none of it does, so a connection lost mid-write never leaves half a
batch to be counted twice on retry (a reply lost *after* EXEC applied is the one case retried
twice). The reader fetches every second of a window in one pipeline of HGETALLs and adds them up.

redis-py errors are translated into :mod:`flags.errors` (StoreUnavailableError, StoreAuthError),
the errors the rest of the product already handles.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from flags.errors import StoreAuthError
from flags.redis_conn import translate
from signals.codec import Batch, merge_hashes, signal_key
from signals.flusher import DEFAULT_RETENTION_S
from signals.model import Window

MAX_WINDOW_S = 86_400  # one HGETALL per second: a day is the most one read may ask for


class RedisSignalWriter:
    """Adds batches to ``<prefix>sig:<flag>:<second>`` hashes (a :class:`BatchWriter`)."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        *,
        retention_s: int = DEFAULT_RETENTION_S,
        url: str = "",
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._retention_s = retention_s
        self._url = url

    async def write(self, batch: Batch) -> int:
        commands = 2  # MULTI, EXEC
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                for (flag, second), fields in batch.items():
                    key = signal_key(self._prefix, flag, second)
                    for name, count in fields.items():
                        pipe.hincrby(key, name, count)
                    pipe.expire(key, self._retention_s)
                    commands += len(fields) + 1
                await pipe.execute()
        except (RedisError, OSError) as exc:
            error = translate(exc, self._url)
            if isinstance(error, StoreAuthError):  # say what the *signal* writer needs
                error = StoreAuthError(f"{error}. Writing signals needs ~<prefix>sig:* and "
                                       "+hincrby +expire +multi +exec (docs/rollouts.md, ACL)")  # fmt: skip
            raise error from exc
        return commands

    async def close(self) -> None:
        await self._client.aclose()


def _check_range(start_s: int, end_s: int) -> None:
    if end_s < start_s:
        raise ValueError(f"a window ends after it starts: [{start_s}, {end_s})")
    if end_s - start_s > MAX_WINDOW_S:
        raise ValueError(f"a window is at most {MAX_WINDOW_S} s, not {end_s - start_s} s")


async def read_window(
    client: aioredis.Redis, prefix: str, flag: str, start_s: int, end_s: int, *, url: str = ""
) -> Window:
    """The whole fleet's signals for ``flag`` over unix seconds ``[start_s, end_s)``, merged."""
    _check_range(start_s, end_s)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for second in range(start_s, end_s):
                pipe.hgetall(signal_key(prefix, flag, second))
            hashes = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise translate(exc, url) from exc
    return merge_hashes(flag, start_s, end_s, hashes)


def read_window_sync(
    client: redis.Redis, prefix: str, flag: str, start_s: int, end_s: int, *, url: str = ""
) -> Window:
    """:func:`read_window` with a blocking client (for CLIs)."""
    _check_range(start_s, end_s)
    try:
        with client.pipeline(transaction=False) as pipe:
            for second in range(start_s, end_s):
                pipe.hgetall(signal_key(prefix, flag, second))
            hashes = pipe.execute()
    except (RedisError, OSError) as exc:
        raise translate(exc, url) from exc
    return merge_hashes(flag, start_s, end_s, hashes)
