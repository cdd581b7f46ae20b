"""Fixtures that start a real tritonserver (see tests/triton_harness.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

# tests/ has no __init__.py; make the harness importable as a top-level module.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from triton_harness import (
    TritonHarnessError,
    TritonInstall,
    TritonServer,
    build_python_backend_repository,
)


@pytest.fixture(scope="session")
def triton_install() -> TritonInstall:
    """The Triton virtualenv; a missing one fails the tests (it is part of `make test`)."""
    install = TritonInstall()
    try:
        install.check()
    except TritonHarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    return install


@contextmanager
def start_triton(
    install: TritonInstall,
    workdir: Path,
    versions: Sequence[int] = (1, 2),
    delays: Mapping[int, float] | None = None,
) -> Iterator[TritonServer]:
    """A ready Triton serving ``digits`` with only ``versions``; stopped on exit, however it ends.
    ``delays``: seconds a version sleeps per batch."""
    repository = build_python_backend_repository(workdir / "repository", versions, delays=delays)
    with TritonServer(repository, install=install) as server:
        yield server


@pytest.fixture(scope="session")
def triton_server(
    triton_install: TritonInstall, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """One Triton serving digits versions 1 and 2 for the whole session."""
    with start_triton(triton_install, tmp_path_factory.mktemp("triton")) as server:
        yield server


@pytest.fixture
def triton_v1_only(triton_install: TritonInstall, tmp_path: Path) -> Iterator[TritonServer]:
    """A Triton of this test's own that serves only digits version 1 (tests may stop it)."""
    with start_triton(triton_install, tmp_path, versions=(1,)) as server:
        yield server


@pytest.fixture
def slow_candidate_triton(triton_install: TritonInstall, tmp_path: Path) -> Iterator[TritonServer]:
    """A Triton of this test's own whose digits v2 sleeps 2 s per batch (v1 takes ~1 ms)."""
    with start_triton(triton_install, tmp_path / "triton", delays={2: 2.0}) as server:
        yield server


@pytest.fixture
def triton_v2_only(triton_install: TritonInstall, tmp_path: Path) -> Iterator[TritonServer]:
    """A Triton of this test's own that serves only digits version 2 (tests may kill it)."""
    with start_triton(triton_install, tmp_path / "v2", versions=(2,)) as server:
        yield server
