"""Where the controller reads fleet-wide windows from: a Protocol, its Redis adapter, a fake.

The Redis adapter is a thin wrapper over :func:`signals.redis_window.read_window` (the signals
package owns the key layout); :class:`MemoryWindows` is the in-memory implementation pure tests
and the controller's own tests use instead of patching.
"""

from __future__ import annotations

import threading
from typing import Protocol

import redis

from signals.model import TargetKey, VersionStats, Window
from signals.redis_window import read_window_sync


class WindowSource(Protocol):
    def read(self, flag: str, start_s: int, end_s: int) -> Window:
        """Measurements of ``flag`` over ``[start_s, end_s)`` (unix seconds), fleet-wide."""
        ...


class RedisWindows:
    """Windows the sidecars recorded into Redis (``signals.redis_window``)."""

    def __init__(self, client: redis.Redis, prefix: str, *, url: str = "") -> None:
        self._client = client
        self._prefix = prefix
        self._url = url

    def read(self, flag: str, start_s: int, end_s: int) -> Window:
        return read_window_sync(self._client, self._prefix, flag, start_s, end_s, url=self._url)


class MemoryWindows:
    """Per-second measurements held in memory; ``read`` merges them like the Redis reader."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[tuple[int, TargetKey], VersionStats] = {}

    def add(self, second: int, key: TargetKey, stats: VersionStats) -> None:
        with self._lock:
            old = self._seconds.get((second, key))
            self._seconds[(second, key)] = stats if old is None else old.merged(stats)

    def read(self, flag: str, start_s: int, end_s: int) -> Window:
        merged: dict[TargetKey, VersionStats] = {}
        with self._lock:
            items = list(self._seconds.items())
        for (second, key), stats in items:
            if key.flag == flag and start_s <= second < end_s:
                old = merged.get(key)
                merged[key] = stats if old is None else old.merged(stats)
        return Window(start_s, end_s, merged)
