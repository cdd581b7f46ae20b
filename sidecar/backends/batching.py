"""Micro-batching for the embedded engine: concurrent requests for one model version that arrive
within a short delay share one session run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from sidecar.backends.model_repository import Tensors

logger = logging.getLogger("sidecar.backends.onnx")


RunFn = Callable[[Tensors], Tensors]


@dataclass
class _Pending:
    feeds: Tensors
    rows: int
    future: asyncio.Future[Tensors]


@dataclass
class _Batcher:
    """Concatenates requests that arrive within ``delay_s`` into runs of at most ``max_rows``.

    Everything but the session run happens on the event loop thread, so no locks are needed.
    """

    run: RunFn
    executor: ThreadPoolExecutor
    max_rows: int
    delay_s: float
    _pending: list[_Pending] = field(default_factory=list)
    _timer: asyncio.TimerHandle | None = None
    _running: set[asyncio.Task[None]] = field(default_factory=set)

    async def submit(self, feeds: Tensors, rows: int) -> Tensors:
        loop = asyncio.get_running_loop()
        pending = _Pending(feeds, rows, loop.create_future())
        self._pending.append(pending)
        if sum(p.rows for p in self._pending) >= self.max_rows:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.delay_s, self._flush)
        return await pending.future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        for group in _groups(pending, self.max_rows):
            task = asyncio.get_running_loop().create_task(self._run_group(group))
            self._running.add(task)  # keep a reference until done, or the task may be collected
            task.add_done_callback(self._running.discard)

    async def _run_group(self, group: list[_Pending]) -> None:
        feeds = {name: np.concatenate([p.feeds[name] for p in group]) for name in group[0].feeds}
        logger.debug(
            "batched %d requests into one run of %d rows", len(group), sum(p.rows for p in group)
        )
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.run, feeds
            )
        except Exception as exc:
            for p in group:
                if not p.future.done():  # the caller may have given up (deadline)
                    p.future.set_exception(exc)
            return
        start = 0
        for p in group:
            if not p.future.done():
                p.future.set_result({n: a[start : start + p.rows] for n, a in outputs.items()})
            start += p.rows

    async def close(self) -> None:
        self._flush()
        await asyncio.gather(*self._running, return_exceptions=True)


def _groups(pending: list[_Pending], max_rows: int) -> list[list[_Pending]]:
    """Split in arrival order into groups whose rows sum to at most ``max_rows``."""
    groups: list[list[_Pending]] = []
    rows = max_rows  # forces a new group for the first item
    for p in pending:
        if rows + p.rows > max_rows:
            groups.append([])
            rows = 0
        groups[-1].append(p)
        rows += p.rows
    return groups
