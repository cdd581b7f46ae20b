"""The in-memory flag store: validates what sources push and keeps the last good state.

Sources hand over raw documents (bytes as stored); the store parses, validates and compiles them,
then swaps in a new :class:`Snapshot` whole. A document that fails validation is rejected, logged
once and counted, and the flag's last good version keeps serving. Documents identical to the last
seen ones are skipped, so a source may re-push everything on every reconcile tick cheaply.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flags.compiled import CompiledFlag
from flags.errors import FlagsError
from flags.schema import parse_flag
from flags.snapshot import EMPTY_SNAPSHOT, Snapshot

log = logging.getLogger("flags.store")

Document = bytes | str


@dataclass(frozen=True, slots=True)
class Change:
    """A flag that changed in the served snapshot (``new_revision`` None: removed)."""

    key: str
    old_revision: int | None
    new_revision: int | None


@dataclass(frozen=True, slots=True)
class Rejection:
    key: str
    reason: str
    at: float


@dataclass
class StoreHealth:
    """What health checks and metrics report about the flag state."""

    loaded: bool = False
    stale: bool = False
    stale_reason: str | None = None
    last_sync_at: float | None = None
    rejected_total: int = 0
    rejections: dict[str, Rejection] = field(default_factory=dict)


Listener = Callable[[list[Change], Snapshot], None]


class FlagStore:
    """Holds the current snapshot. Readers take ``store.snapshot``: one atomic reference read."""

    def __init__(self, *, snapshot_file: Path | None = None) -> None:
        self._snapshot: Snapshot = EMPTY_SNAPSHOT
        self._seen: dict[str, bytes] = {}  # last raw document per key, accepted or rejected
        self._accepted: dict[str, bytes] = {}  # raw document of each flag now serving
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._snapshot_file = snapshot_file
        self.health = StoreHealth()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def sync(self, documents: Mapping[str, Document | None], *, complete: bool) -> list[Change]:
        """Apply documents from a source.

        ``complete=True`` means ``documents`` is everything the source has: flags missing from it
        are removed. A None document means that flag was deleted.
        """
        with self._lock:
            updates: dict[str, CompiledFlag | None] = {}
            if complete:
                for key in self._snapshot.keys() - documents.keys():
                    updates[key] = None
            for key, raw in documents.items():
                if raw is None:
                    if key in self._snapshot:
                        updates[key] = None
                    continue
                data = raw.encode() if isinstance(raw, str) else raw
                if self._seen.get(key) == data:
                    continue
                self._seen[key] = data
                compiled = self._compile(key, data)
                if compiled is not None:
                    updates[key] = compiled
                    self._accepted[key] = data
            for key, flag in updates.items():
                if flag is None:
                    self._seen.pop(key, None)
                    self._accepted.pop(key, None)
            changes = self._swap(updates)
            self.health.loaded = True
            self.health.last_sync_at = time.time()
        if changes:
            self._persist()
            for listener in self._listeners:
                try:
                    listener(changes, self._snapshot)
                except Exception:  # a listener's bug must not stop flag updates
                    log.exception("flag change listener %r failed", listener)
        return changes

    def _compile(self, key: str, data: bytes) -> CompiledFlag | None:
        try:
            flag = CompiledFlag(parse_flag(data, key=key))
        except FlagsError as exc:
            self._reject(key, str(exc))
            return None
        except Exception as exc:  # a bug compiling a valid document: reject it, keep serving
            log.exception("compiling flag %r failed", key)
            self._reject(key, f"internal error compiling the flag: {exc}")
            return None
        self.health.rejections.pop(key, None)
        return flag

    def _reject(self, key: str, reason: str) -> None:
        self.health.rejected_total += 1
        self.health.rejections[key] = Rejection(key, reason, time.time())
        serving = self._snapshot.get(key)
        kept = f"revision {serving.revision} keeps serving" if serving else "flag not served"
        log.warning("rejected flag %r (%s): %s", key, kept, reason)

    def _swap(self, updates: Mapping[str, CompiledFlag | None]) -> list[Change]:
        old = self._snapshot
        changes = []
        for key, flag in updates.items():
            before = old.get(key)
            if before is None and flag is None:
                continue
            changes.append(
                Change(
                    key,
                    before.revision if before else None,
                    flag.revision if flag else None,
                )
            )
        if changes:
            self._snapshot = old.replace(updates)
        return changes

    def mark_stale(self, reason: str) -> None:
        if not self.health.stale:
            log.warning("flag source unreachable, serving last good flags: %s", reason)
        self.health.stale = True
        self.health.stale_reason = reason

    def mark_fresh(self) -> None:
        if self.health.stale:
            log.info("flag source reachable again; flags resynced")
        self.health.stale = False
        self.health.stale_reason = None

    # Local snapshot file: lets a process start (stale) while its source is down.
    def _persist(self) -> None:
        if self._snapshot_file is None:
            return
        payload = {key: raw.decode() for key, raw in self._accepted.items()}
        tmp = self._snapshot_file.with_suffix(self._snapshot_file.suffix + ".tmp")
        try:
            tmp.write_text(json.dumps(payload))
            os.replace(tmp, self._snapshot_file)
        except OSError as exc:
            log.warning("could not write flag snapshot file %s: %s", self._snapshot_file, exc)

    def load_snapshot_file(self) -> bool:
        """Serve the flags saved in the snapshot file, marked stale. True if any were loaded."""
        path = self._snapshot_file
        if path is None or not path.exists():
            return False
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable flag snapshot file %s: %s", path, exc)
            return False
        if not isinstance(saved, dict):
            return False
        self.sync({str(k): str(v) for k, v in saved.items()}, complete=True)
        self.mark_stale(f"started from snapshot file {path}")
        return len(self._snapshot) > 0
