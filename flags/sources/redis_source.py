"""The production flag source: Redis, kept current by pub/sub hints plus a reconcile timer.

* Start: subscribe first, then load every flag (so no change between the two is missed).
* A message on the change channel is a hint: re-read that flag's document whole.
* Every ``reconcile_interval`` re-read all documents (``SMEMBERS`` + ``MGET``): catches a raw
  ``redis-cli SET`` that announced nothing, and any lost message. Unchanged bytes cost no parsing.
* Connection lost: keep serving the last good snapshot, mark the store stale, retry with
  exponential backoff, and resync fully on reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from flags.redis_conn import as_text, async_client, redact
from flags.redis_keys import RedisKeys
from flags.store import FlagStore

log = logging.getLogger("flags.sources.redis")

MAX_BACKOFF_S = 2.0


class RedisFlagSource:
    def __init__(
        self,
        url: str,
        store: FlagStore,
        *,
        keys: RedisKeys | None = None,
        reconcile_interval: float = 0.5,
        start_timeout: float = 5.0,
    ) -> None:
        self._url = url
        self._store = store
        self._keys = keys or RedisKeys()
        self._reconcile_interval = reconcile_interval
        self._start_timeout = start_timeout
        self._task: asyncio.Task[None] | None = None
        self._first_sync = asyncio.Event()
        self.resyncs = 0  # full loads completed (start + reconnects + reconcile ticks)

    @property
    def description(self) -> str:
        return redact(self._url)

    async def start(self) -> None:
        """Load all flags; if Redis is down, serve the snapshot file (stale) and keep retrying."""
        self._task = asyncio.create_task(self._run(), name="flags-redis-source")
        try:
            await asyncio.wait_for(self._first_sync.wait(), self._start_timeout)
        except TimeoutError:
            if not self._store.load_snapshot_file():
                log.error("no flags: Redis %s unreachable and no snapshot file", self.description)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            client = async_client(self._url)
            try:
                await self._serve(client)
            except (RedisError, OSError) as exc:
                self._store.mark_stale(f"redis {self.description}: {exc}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except Exception as exc:  # never let a bug end the watch: flags would freeze silently
                log.exception("flag source %s failed; retrying", self.description)
                self._store.mark_stale(f"redis {self.description}: internal error {exc!r}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            else:  # pragma: no cover - _serve only returns by raising
                backoff = 0.05
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _serve(self, client: aioredis.Redis) -> None:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._keys.channel)
            if await self._resync(client):
                self._store.mark_fresh()
            self._first_sync.set()
            next_reconcile = time.monotonic() + self._reconcile_interval
            while True:
                wait = max(0.0, next_reconcile - time.monotonic())
                message = await pubsub.get_message(timeout=wait)
                if message is not None and message.get("type") == "message":
                    await self._on_hint(client, message["data"])
                if time.monotonic() >= next_reconcile:
                    if await self._resync(client):
                        self._store.mark_fresh()
                    next_reconcile = time.monotonic() + self._reconcile_interval
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _resync(self, client: aioredis.Redis) -> bool:
        """Load every flag. False (and the store marked stale) when Redis came back empty."""
        keys = sorted(as_text(k) for k in await client.smembers(self._keys.index))
        self.resyncs += 1
        if not keys and len(self._store.snapshot) > 0:
            # An empty index while we hold flags is almost always a Redis restarted without its
            # data or a failover to an empty replica, not ops deleting every flag. Dropping them
            # would route every request to whatever the app asked for, so keep the last good.
            self._store.mark_stale(f"redis {self.description} has no flags; keeping last good")
            return False
        values = await client.mget([self._keys.flag(k) for k in keys]) if keys else []
        self._store.sync(dict(zip(keys, values, strict=True)), complete=True)
        return True

    async def _on_hint(self, client: aioredis.Redis, data: bytes) -> None:
        try:
            key = str(json.loads(data)["key"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed change message %r; reconcile will catch up", data)
            return
        raw = await client.get(self._keys.flag(key))
        self._store.sync({key: raw}, complete=False)
        if raw is not None:
            self._store.mark_fresh()
