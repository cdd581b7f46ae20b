"""Shared plumbing: paths, /proc readings (CPU time, RSS), and bounded waits on subprocesses."""

from __future__ import annotations

import asyncio
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:  # tests/servers.py and tests/triton_harness.py are plain modules
    sys.path.insert(0, str(TESTS))

# The tests' plain-Python helpers for real servers, shared with the suite rather than copied.
from servers import RedisServer, free_port, stop_process, wait_until  # type: ignore[import-not-found]  # noqa: E402
from triton_harness import TritonServer, build_python_backend_repository  # type: ignore[import-not-found]  # noqa: E402

__all__ = [
    "ROOT",
    "RedisServer",
    "TritonServer",
    "build_python_backend_repository",
    "free_port",
    "stop_process",
    "wait_until",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        found.extend(int(c) for c in text.split())
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (bounded: at most 256 processes)."""
    tree: list[int] = []
    queue = [pid]
    while queue and len(tree) < 256:
        current = queue.pop()
        tree.append(current)
        queue.extend(_children(current))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in process_tree(pid))


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (VmRSS)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0  # exited between listing and reading
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def read_line(proc: subprocess.Popen[str], *, timeout: float, what: str) -> str:
    """The next stdout line of ``proc``, or an error at the deadline or when it exits."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=min(0.2, max(0.0, deadline - time.monotonic()))):
                line = proc.stdout.readline()
                if line:
                    return line
                break  # EOF: it exited
            if proc.poll() is not None:
                break
    raise RuntimeError(f"{what}: no line within {timeout} s (exit code {proc.poll()})")


class BackgroundLoop:
    """Runs ``self._run()`` on its own event loop in a daemon thread until ``close()``.

    Subclasses (load generators) define ``_run`` and watch ``self.stop`` to end it.
    """

    stop: threading.Event
    thread: threading.Thread | None

    def start(self) -> None:
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)

    async def _run(self) -> None:
        raise NotImplementedError


async def drive(
    call: Callable[[int], Awaitable[object]], total: int, limit_s: float, concurrency: int
) -> tuple[int, float]:
    """``total`` calls ``call(i)`` from ``concurrency`` tasks (after a warm-up of two per task),
    or fewer if ``limit_s`` runs out: (count, seconds)."""
    await asyncio.gather(*(call(i) for i in range(concurrency * 2)))  # warm-up
    done = 0
    deadline = time.monotonic() + limit_s

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while done < total and time.monotonic() < deadline:
            await call(i)
            done += 1
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done, time.perf_counter() - started
