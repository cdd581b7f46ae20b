"""The controller's golden runs: :mod:`rollout.golden_runner` on a worker thread, never in a tick.

A golden set is hundreds of single requests (digits: 900, about 2 s on the embedded engine; more
on a busy Triton). Run inside the tick it would hold back every other rollout's guardrails and
could let the leader lease lapse, so :class:`GoldenJobs` runs one set at a time on its own
thread, and the tick only asks where the run for a fingerprint stands (:class:`GoldenJob`). A run
that cannot finish (no golden file, the backend down) is retried ``retry_s`` after the tick that
saw it fail; the reason is shown in the rollout's gates meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flags.schema import FlagSpec
from rollout.gates import GoldenJob, JobState
from rollout.golden import GoldenResult
from rollout.golden_runner import GoldenError, golden_file, load_golden, open_backend, run_on
from sidecar.backends.base import BackendError
from sidecar.resources import default_model_repository


@dataclass(slots=True)
class _Entry:
    key: str  # the fingerprint, as canonical JSON
    future: Future[GoldenResult]
    retry_at: float | None = None  # set by the first tick that sees the run failed


class GoldenJobs:
    """One golden run at a time, per flag the latest fingerprint's (a :class:`GoldenRunner`)."""

    def __init__(
        self,
        *,
        triton_url: str | None = None,
        model_repository: Path | None = None,
        timeout_s: float = 10.0,
        retry_s: float = 30.0,
        actor: str = "trafficsplit-controller",
    ) -> None:
        self.triton_url = triton_url
        self.repository = model_repository or default_model_repository()
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._actor = actor
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="golden")
        self._lock = threading.Lock()
        self._jobs: dict[str, _Entry] = {}

    def job(
        self, spec: FlagSpec, candidate: str, expected: Mapping[str, Any], now: float
    ) -> GoldenJob:
        key = json.dumps(expected, sort_keys=True)
        with self._lock:
            entry = self._jobs.get(spec.key)
            if entry is not None and entry.key == key:
                if not entry.future.done():
                    return GoldenJob(JobState.RUNNING)
                error = entry.future.exception()
                if error is None:
                    return GoldenJob(JobState.DONE, result=entry.future.result())
                if entry.retry_at is None:
                    entry.retry_at = now + self._retry_s
                if now < entry.retry_at:
                    return GoldenJob(
                        JobState.ERROR, error=_describe(error), retry_at=entry.retry_at
                    )
            future = self._pool.submit(self._run, spec, candidate, now)
            self._jobs[spec.key] = _Entry(key, future)
            return GoldenJob(JobState.RUNNING)

    def idle(self) -> bool:
        """No run in progress or queued (tests wait on this)."""
        with self._lock:
            return all(e.future.done() for e in self._jobs.values())

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, spec: FlagSpec, candidate: str, now: float) -> GoldenResult:
        path = golden_file(spec, self.repository)
        data = load_golden(path, spec.golden.labels if spec.golden else "labels")
        backend, where = open_backend(self.triton_url, self.repository)
        context = {
            "flag_revision": spec.revision,
            "timestamp": now,
            "at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
            "run_by": self._actor,
        }
        return asyncio.run(
            run_on(
                backend,
                where,
                spec,
                data,
                candidate=candidate,
                timeout_s=self._timeout_s,
                context=context,
            )
        )


def _describe(error: BaseException) -> str:
    if isinstance(error, GoldenError | BackendError):
        return str(error)  # already says what to fix
    return f"{type(error).__name__}: {error}"
