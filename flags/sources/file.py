"""A watched JSON/YAML file of flags: the embedded default when no Redis is configured.

The file holds one flag, a list of flags, or ``{"flags": [...]}``. It is polled (mtime and size)
rather than watched with inotify: no extra dependency, and it works on every filesystem, including
Kubernetes ConfigMap mounts, whose atomic symlink swaps inotify watchers often miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

from flags.errors import FlagsError
from flags.schema import load_flag_file_text
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
            documents = load_flag_file_text(self._path.read_text(), filename=self._path.name)
            by_key = {
                str(doc.get("key", f"#{i}")): json.dumps(doc) for i, doc in enumerate(documents)
            }
        except (OSError, FlagsError) as exc:
            self._store.health.rejected_total += 1
            log.warning("rejected flag file %s, last good flags keep serving: %s", self._path, exc)
            return
        self._store.sync(by_key, complete=True)
        self._store.mark_fresh()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                self.reload()
            except Exception:  # never let a bug end the watch: flags would freeze silently
                log.exception("reloading %s failed; will retry", self._path)
