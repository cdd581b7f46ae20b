"""Shared fixtures: real redis-server processes, flag documents, and a per-test key prefix."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

from servers import RedisServer  # noqa: E402
from support import digits_flag  # noqa: E402


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for tests that kill or reconfigure it."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own, so tests sharing one Redis never see each other."""
    return f"t-{request.node.name[:40]}-{id(request)}:"


@pytest.fixture
def digits_doc() -> dict[str, Any]:
    return digits_flag()
