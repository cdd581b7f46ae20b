"""The production flag source: Redis, kept current by pub/sub hints plus a reconcile timer.

* Start: subscribe first, then load every flag (so no change between the two is missed).
* A message on the change channel is a hint: re-read that flag's document whole.
* Every ``reconcile_interval`` re-read all documents (``SMEMBERS`` + ``MGET``): catches a raw
  ``redis-cli SET`` that announced nothing, and any lost message. Unchanged bytes cost no parsing.
* Connection lost: keep serving the last good snapshot, mark the store stale, retry with
  exponential backoff, and resync fully on reconnect.
* A served flag whose document (or index entry) is gone is removed only when its tombstone
  (written by ``flagctl delete``) exists; otherwise the store keeps it as data loss.
* Credentials refused or a permission missing (WRONGPASS, NOAUTH, NOPERM): :meth:`start` raises
  :class:`StoreAuthError` (a sidecar then exits); later, the store reports ``auth``, never
  "unreachable", and the source keeps retrying in case the ACL is fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from flags.errors import StoreAuthError
from flags.redis_conn import as_text, async_client, is_auth_error, redact, translate
from flags.redis_keys import RedisKeys
from flags.store import FlagStore, SourceStatus

log = logging.getLogger("flags.sources.redis")

# Reconnect attempts back off from 0.05 s to at most 0.5 s: one failed connect is cheap, and
# changes must apply within about a second of Redis returning, however long it was away.
MAX_BACKOFF_S = 0.5


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
        self._fatal: StoreAuthError | None = None
        self.resyncs = 0  # full loads completed (start + reconnects + reconcile ticks)

    @property
    def description(self) -> str:
        return redact(self._url)

    async def start(self) -> None:
        """Load all flags; if Redis is down, serve the snapshot file (stale) and keep retrying.

        Raises :class:`StoreAuthError` when Redis refuses the credentials or a permission: a
        misconfiguration that retrying cannot fix, so a sidecar must not start serving.
        """
        self._task = asyncio.create_task(self._run(), name="flags-redis-source")
        try:
            await asyncio.wait_for(self._first_sync.wait(), self._start_timeout)
        except TimeoutError:
            if not self._store.load_snapshot_file():
                log.error("no flags: Redis %s unreachable and no snapshot file", self.description)
        if self._fatal is not None:
            await self.close()
            raise self._fatal

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
                if is_auth_error(exc):
                    error = translate(exc, self._url)
                    self._store.mark_stale(str(error), status=SourceStatus.AUTH)
                    if not self._first_sync.is_set():
                        self._fatal = StoreAuthError(str(error))
                        self._first_sync.set()
                        return
                else:
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
            await self._resync(client)
            self._store.mark_fresh()
            self._first_sync.set()
            next_reconcile = time.monotonic() + self._reconcile_interval
            while True:
                wait = max(0.0, next_reconcile - time.monotonic())
                message = await pubsub.get_message(timeout=wait)
                if message is not None and message.get("type") == "message":
                    await self._on_hint(client, message["data"])
                if time.monotonic() >= next_reconcile:
                    await self._resync(client)
                    self._store.mark_fresh()
                    next_reconcile = time.monotonic() + self._reconcile_interval
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _resync(self, client: aioredis.Redis) -> None:
        """Load every flag; flags that vanished are removed only if they have a tombstone."""
        keys = sorted(as_text(k) for k in await client.smembers(self._keys.index))
        self.resyncs += 1
        values = await client.mget([self._keys.flag(k) for k in keys]) if keys else []
        documents = dict(zip(keys, values, strict=True))
        gone = [k for k in self._store.snapshot if documents.get(k) is None]
        tombstones = await self._tombstoned(client, gone)
        self._store.sync(documents, complete=True, tombstones=tombstones)

    async def _tombstoned(self, client: aioredis.Redis, keys: list[str]) -> set[str]:
        if not keys:
            return set()
        found = await client.mget([self._keys.tombstone(k) for k in keys])
        return {k for k, t in zip(keys, found, strict=True) if t is not None}

    async def _on_hint(self, client: aioredis.Redis, data: bytes) -> None:
        try:
            key = str(json.loads(data)["key"])
        except (ValueError, KeyError, TypeError, RecursionError):
            log.warning("ignoring malformed change message %r; reconcile will catch up", data)
            return
        raw = await client.get(self._keys.flag(key))
        tombstones = await self._tombstoned(client, [key]) if raw is None else set()
        self._store.sync({key: raw}, complete=False, tombstones=tombstones)
