"""Where the controller reads fleet-wide windows from: a Protocol, its Redis adapter, a fake.

The Redis adapter is a thin wrapper over :func:`signals.redis_window.read_window` (the signals
package owns the key layout); :class:`MemoryWindows` is the in-memory implementation pure tests
and the controller's own tests use instead of patching.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Protocol

import redis

from signals.model import TargetKey, VersionStats, Window


class WindowSource(Protocol):
    def read(self, flag: str, start_s: int, end_s: int) -> Window:
        """Measurements of ``flag`` over ``[start_s, end_s)`` (unix seconds), fleet-wide."""
        ...


class RedisWindows:
    """Windows the sidecars recorded into Redis (``signals.redis_window``)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        # Resolved at construction, not import: the reader lives in the signals package.
        module = importlib.import_module("signals.redis_window")
        self._read: Callable[..., Window] = module.read_window

    def read(self, flag: str, start_s: int, end_s: int) -> Window:
        return self._read(self._client, self._prefix, flag, start_s, end_s)


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
