"""The in-memory flag store: validates what sources push and keeps the last good state.

Sources hand over raw documents (bytes as stored); the store parses, validates and compiles them,
then swaps in a new :class:`Snapshot` whole. A document that fails validation is rejected, logged
once and counted, and the flag's last good version keeps serving. Documents identical to the last
seen ones are skipped, so a source may re-push everything on every reconcile tick cheaply.

A flag that disappears is removed only when the source says it was deleted on purpose: sources
that know deletions (Redis: a ``flagctl delete`` tombstone) pass ``tombstones``; a flag missing
without one is data loss, so its last good version keeps serving, marked stale (see
:mod:`flags.health`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from flags.compiled import CompiledFlag
from flags.errors import FlagsError, FlagValidationError
from flags.health import Rejection, SourceStatus, StoreHealth
from flags.schema import parse_flag
from flags.snapshot import EMPTY_SNAPSHOT, Snapshot

__all__ = ["Change", "FlagStore", "Rejection", "SourceStatus", "StoreHealth"]

log = logging.getLogger("flags.store")

Document = bytes | str


@dataclass(frozen=True, slots=True)
class Change:
    """A flag that changed in the served snapshot (``new_revision`` None: removed)."""

    key: str
    old_revision: int | None
    new_revision: int | None


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

    def sync(
        self,
        documents: Mapping[str, Document | None],
        *,
        complete: bool,
        tombstones: Collection[str] | None = None,
    ) -> list[Change]:
        """Apply documents from a source.

        ``complete=True`` means ``documents`` is everything the source has. A served flag that is
        absent from a complete sync, or given as None, has gone: with ``tombstones`` None (file
        and memory sources, where absence is the edit) it is removed; otherwise it is removed
        only if its key is in ``tombstones`` (deleted on purpose) and kept, stale, if not.
        """
        with self._lock:
            gone = {key for key, raw in documents.items() if raw is None}
            if complete:
                gone |= self._snapshot.keys() - documents.keys()
            gone &= self._snapshot.keys()
            lost = set() if tombstones is None else gone - set(tombstones)
            updates: dict[str, CompiledFlag | None] = {key: None for key in gone - lost}
            for key, raw in documents.items():
                if raw is None:
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
            self._track_missing(lost, present={k for k, v in documents.items() if v is not None})
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

    def _track_missing(self, lost: set[str], *, present: set[str]) -> None:
        """Flags kept after their document vanished: logged and counted once per episode."""
        before = set(self.health.missing_flags)
        now = (before - present - {k for k in before if k not in self._snapshot}) | lost
        new = sorted(now - before)
        if new:
            self.health.data_loss_total += len(new)
            log.error(
                "flag documents disappeared without `flagctl delete` (data loss?): %s; "
                "their last good versions keep serving, marked stale",
                ", ".join(new),
            )
        back = sorted(before - now)
        if back:
            log.info("flag documents present again: %s", ", ".join(back))
        if new or back:
            self.health.missing_flags = tuple(sorted(now))
            self.health.refresh()

    def _compile(self, key: str, data: bytes) -> CompiledFlag | None:
        try:
            flag = CompiledFlag(parse_flag(data, key=key))
        except FlagValidationError as exc:
            self.reject(key, str(exc), exc.issues)
            return None
        except FlagsError as exc:
            self.reject(key, str(exc))
            return None
        except Exception as exc:  # a bug compiling a valid document: reject it, keep serving
            log.exception("compiling flag %r failed", key)
            self.reject(key, f"internal error compiling the flag: {exc}")
            return None
        self.health.rejections.pop(key, None)
        return flag

    def reject(self, key: str, reason: str, issues: tuple[str, ...] = ()) -> None:
        """Count and log an invalid document (``key``: a flag, or a file as a whole)."""
        self.health.rejected_total += 1
        self.health.rejections[key] = Rejection(key, reason, time.time(), issues)
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

    def mark_stale(self, reason: str, *, status: SourceStatus = SourceStatus.UNREACHABLE) -> None:
        """The source cannot be read (``status`` says why); the last good flags keep serving."""
        if self.health.source_status is not status:
            if status is SourceStatus.AUTH:
                log.error("flag source refused our credentials, serving last good: %s", reason)
            else:
                log.warning("flag source unreachable, serving last good flags: %s", reason)
        self.health.source_status = status
        self.health.source_error = reason
        self.health.refresh()

    def mark_fresh(self) -> None:
        if self.health.source_status is not SourceStatus.OK or self.health.started_from_snapshot:
            log.info("flag source readable again; flags resynced")
        self.health.source_status = SourceStatus.OK
        self.health.source_error = None
        self.health.started_from_snapshot = None
        self.health.refresh()

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
        except (OSError, ValueError, RecursionError) as exc:
            log.warning("ignoring unreadable flag snapshot file %s: %s", path, exc)
            return False
        if not isinstance(saved, dict):
            return False
        self.sync({str(k): str(v) for k, v in saved.items()}, complete=True)
        self.health.started_from_snapshot = f"started from snapshot file {path}"
        self.health.refresh()
        return len(self._snapshot) > 0
