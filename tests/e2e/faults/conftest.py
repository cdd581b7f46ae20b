"""Fault-drill fixtures: a real sidecar process reaching real Redis (and Triton) through a
:class:`~faultproxy.FaultProxy`, with its metrics endpoint on, and a summary of every measured
number (``FAULT-METRIC`` lines) at the end of the run."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from servers import RedisServer
from support import digits_flag

from flags.admin import FlagAdmin
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from flags.schema import parse_flag
from sidecar.launcher import SidecarProcess

FLAG = "digits"


def base_flag(**overrides: Any) -> dict[str, Any]:
    """The demo flag (80 % control on v1, 20 % candidate on v2)."""
    return digits_flag(**overrides)


def flag_with_new_revision() -> dict[str, Any]:
    """A change that moves no load-test user (one more name on the allow-list): the new revision
    is the signal that the change applied, and the cohorts must stay as they were."""
    doc = base_flag()
    doc["rules"][0]["users"] = [*doc["rules"][0]["users"], "carol@example.com"]
    return doc


@dataclass
class Drill:
    """One sidecar, its Redis behind a proxy, and (optionally) its Triton behind another."""

    sidecar: SidecarProcess
    redis: RedisServer
    redis_proxy: FaultProxy
    log_path: Path

    @property
    def metrics_url(self) -> str:
        return self.sidecar.metrics_url

    def admin(self) -> FlagAdmin:
        return FlagAdmin(sync_client(self.redis.url), keys=RedisKeys(), actor="fault-drill")

    def apply(self, doc: dict[str, Any]) -> int:
        return self.admin().apply(parse_flag(doc), reason="fault drill", force=True).revision

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


SIDECAR_ARGS = ("--metrics-listen", "127.0.0.1:0", "--drain-delay-s", "0", "--grace-s", "1")


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    """``start_sidecar(*args)``: a real sidecar process (metrics on, quick shutdown; later
    arguments override these), its stderr in ``tmp_path/sidecar-<n>.log``; stopped at the end."""
    started: list[SidecarProcess] = []

    def start(*args: str) -> SidecarProcess:
        log_path = tmp_path / f"sidecar-{len(started)}.log"
        sidecar = SidecarProcess([*SIDECAR_ARGS, *args], stderr_path=log_path)
        started.append(sidecar)
        return sidecar.start()

    try:
        yield start
    finally:
        for sidecar in started:
            sidecar.stop()


@pytest.fixture
def drill(
    tmp_path: Path, start_sidecar: Callable[..., SidecarProcess]
) -> Iterator[Callable[..., Drill]]:
    """``drill(*sidecar_args)``: Redis (flag applied) → proxy → sidecar; all stopped at the end."""
    stack: list[RedisServer | FaultProxy] = []

    def start(*args: str) -> Drill:
        redis = RedisServer(tmp_path / "redis").start()
        stack.append(redis)
        proxy = FaultProxy(redis.port).start()
        stack.append(proxy)
        FlagAdmin(sync_client(redis.url), keys=RedisKeys(), actor="fault-drill").apply(
            parse_flag(base_flag()), reason="fault drill setup"
        )
        sidecar = start_sidecar("--redis-url", f"redis://{proxy.address}/0", *args)
        assert sidecar.stderr_path is not None
        return Drill(sidecar, redis, proxy, sidecar.stderr_path)

    try:
        yield start
    finally:
        for thing in reversed(stack):
            thing.stop()


_METRIC = re.compile(r"^FAULT-METRIC (\S+)=(\S+)$", re.M)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """List every FAULT-METRIC the drills printed (they are the numbers in docs/operations.md)."""
    lines = []
    for report in terminalreporter.getreports("passed") + terminalreporter.getreports("failed"):
        for _section, text in report.sections:
            lines += [f"{report.head_line}: {m[0]}={m[1]}" for m in _METRIC.findall(text)]
    if lines:
        terminalreporter.write_sep("-", "fault drill measurements")
        for line in lines:
            terminalreporter.write_line(line)
