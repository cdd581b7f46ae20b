"""A watched JSON/YAML file of flags: the embedded default when no Redis is configured.

The file holds one flag, a list of flags, or ``{"flags": [...]}``. It is polled (mtime and size)
rather than watched with inotify: no extra dependency, and it works on every filesystem, including
Kubernetes ConfigMap mounts, whose atomic symlink swaps inotify watchers often miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from flags.errors import FlagsError, FlagValidationError
from flags.schema import entry_document, entry_key, load_flag_file_text
from flags.store import FlagStore

log = logging.getLogger("flags.sources.file")


class FileFlagSource:
    def __init__(self, path: Path, store: FlagStore, *, poll_interval: float = 0.5) -> None:
        self._path = path
        self._store = store
        self._poll_interval = poll_interval
        self._signature: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def description(self) -> str:
        return str(self._path)

    async def start(self) -> None:
        self.reload()
        self._task = asyncio.create_task(self._watch(), name="flags-file-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def reload(self) -> None:
        """Read the file if it changed; a broken file is rejected and the last good flags stay."""
        try:
            stat = self._path.stat()
        except OSError as exc:
            self._store.mark_stale(f"cannot read {self._path}: {exc}")
            return
        signature = (stat.st_mtime_ns, stat.st_size)
        if signature == self._signature:
            return
        self._signature = signature
        try:
            entries = load_flag_file_text(self._path.read_text(), filename=self._path.name)
        except (OSError, UnicodeDecodeError, FlagsError) as exc:
            # The whole file is unreadable: recorded under its path, the last good flags stay.
            issues = exc.issues if isinstance(exc, FlagValidationError) else (str(exc),)
            self._store.reject(str(self._path), f"rejected flag file: {exc}", issues)
            return
        # Each entry is validated by the store exactly like a document read from Redis.
        by_key = {entry_key(doc, i): entry_document(doc) for i, doc in enumerate(entries)}
        self._store.health.rejections.pop(str(self._path), None)
        self._store.sync(by_key, complete=True)
        self._store.mark_fresh()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                self.reload()
            except Exception:  # never let a bug end the watch: flags would freeze silently
                log.exception("reloading %s failed; will retry", self._path)
