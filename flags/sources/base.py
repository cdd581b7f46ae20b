"""The seam between the store and wherever flags live."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class FlagSource(Protocol):
    """Feeds a store. ``start`` returns once the first load is done (or fell back to the snapshot
    file); watching for changes then continues in the background until ``close``."""

    @property
    def description(self) -> str:
        """Where the flags come from, for logs and health ("redis://host:6379/0", a path)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
