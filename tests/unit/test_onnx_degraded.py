"""The embedded engine degrades instead of dying: a version that cannot be loaded is reported and
left out, the others serve, and start fails only when nothing at all could be loaded."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from support import ROOT, make_request

from sidecar.backends.base import BackendError, ErrorKind
from sidecar.backends.onnx_embedded import OnnxEmbeddedBackend

REPO = ROOT / "triton_models"
CPU = ["CPUExecutionProvider"]
PIXELS = np.zeros((1, 64), np.float32)
T = TypeVar("T")


def copy_repository(tmp_path: Path) -> Path:
    """A private copy of triton_models/ (without the golden set) that a test may break."""
    repo = tmp_path / "models"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns("*.npz"))
    return repo


def corrupt(path: Path) -> Path:
    path.write_bytes(b"\x00not an onnx model\xff" * 8)
    return path


def with_backend(repo: Path, scenario: Callable[[OnnxEmbeddedBackend], Awaitable[T]]) -> T:
    async def main() -> T:
        backend = OnnxEmbeddedBackend(repo, providers=CPU)
        await backend.start()
        try:
            return await scenario(backend)
        finally:
            await backend.close()

    return asyncio.run(main())


async def infer_error(backend: OnnxEmbeddedBackend, version: str, model: str = "digits") -> Any:
    with pytest.raises(BackendError) as caught:
        await backend.infer(make_request(PIXELS, version=version, model=model), timeout=5)
    return caught.value


def test_corrupt_candidate_leaves_the_stable_version_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = copy_repository(tmp_path)
    broken = corrupt(repo / "digits" / "2" / "model.onnx")
    caplog.set_level(logging.INFO, logger="sidecar.backends.onnx")

    async def scenario(backend: OnnxEmbeddedBackend) -> Any:
        served = await backend.infer(make_request(PIXELS, version="1"), timeout=5)
        latest = await backend.infer(make_request(PIXELS, version=""), timeout=5)
        ready = [await backend.model_ready("digits", v) for v in ("1", "2", "")]
        metadata = await backend.model_metadata("digits", "")
        return served, latest, ready, metadata, await infer_error(backend, "2")

    served, latest, ready, metadata, error = with_backend(repo, scenario)
    assert served.model_version == "1"
    assert latest.model_version == "1"  # "" = the latest version that loaded
    assert ready == [True, False, True]
    assert list(metadata.versions) == ["1"]
    assert error.kind is ErrorKind.UNAVAILABLE and error.fallback_eligible
    assert str(broken) in error.message and "'2'" in error.message
    assert "protobuf" in error.message.lower()  # onnxruntime's reason travels with it
    logged = [r for r in caplog.records if str(broken) in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR


def test_load_failures_list_each_version_with_its_reason(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path)
    corrupt(repo / "digits" / "2" / "model.onnx")

    async def scenario(backend: OnnxEmbeddedBackend) -> Any:
        return dict(backend.load_failures)

    failures = with_backend(repo, scenario)
    assert list(failures) == [("digits", "2")]
    assert failures["digits", "2"].startswith(f"cannot load {repo / 'digits' / '2' / 'model.onnx'}")
    assert "\n" not in failures["digits", "2"]  # one log line, one metric label


def test_version_the_policy_lists_but_the_disk_lacks_is_reported_not_fatal(
    tmp_path: Path,
) -> None:
    repo = copy_repository(tmp_path)
    shutil.rmtree(repo / "digits" / "2")

    async def scenario(backend: OnnxEmbeddedBackend) -> Any:
        served = await backend.infer(make_request(PIXELS, version="1"), timeout=5)
        return served, dict(backend.load_failures), await infer_error(backend, "2")

    served, failures, error = with_backend(repo, scenario)
    assert served.model_version == "1"
    assert failures == {
        ("digits", "2"): f"cannot load {repo / 'digits' / '2' / 'model.onnx'}: "
        "the file does not exist"
    }
    assert error.kind is ErrorKind.UNAVAILABLE
    assert "does not exist" in error.message


def test_version_states_say_why_each_target_is_not_ready(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path)
    corrupt(repo / "digits" / "2" / "model.onnx")
    targets = [("digits", "1"), ("digits", "2"), ("digits", "3"), ("nope", "1")]

    async def scenario(backend: OnnxEmbeddedBackend) -> Any:
        return await backend.version_states(targets)

    states = with_backend(repo, scenario)
    assert list(states) == targets
    assert states["digits", "1"] is None
    assert "cannot load" in str(states["digits", "2"])
    assert "no version '3'" in str(states["digits", "3"])
    assert "unknown model 'nope'" in str(states["nope", "1"])


def test_version_states_before_start_are_reasons_not_errors() -> None:
    states = asyncio.run(OnnxEmbeddedBackend(REPO, providers=CPU).version_states([("digits", "1")]))
    assert states == {("digits", "1"): "backend not started (call start() first)"}


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ("name: {{{ not protobuf text", "cannot load model 'broken'"),
        ('name: "broken"\nbackend: "python"\nmax_batch_size: 1', "is not ONNX"),
    ],
)
def test_a_broken_model_does_not_stop_the_others(tmp_path: Path, config: str, reason: str) -> None:
    repo = copy_repository(tmp_path)
    (repo / "broken").mkdir()
    (repo / "broken" / "config.pbtxt").write_text(config)

    async def scenario(backend: OnnxEmbeddedBackend) -> Any:
        served = await backend.infer(make_request(PIXELS, version="2"), timeout=5)
        error = await infer_error(backend, "1", model="broken")
        return served, dict(backend.load_failures), error, await backend.model_ready("broken", "")

    served, failures, error, broken_ready = with_backend(repo, scenario)
    assert served.model_version == "2"
    assert list(failures) == [("broken", "")]
    assert reason in failures["broken", ""]
    assert error.kind is ErrorKind.UNAVAILABLE and reason in error.message
    assert broken_ready is False


def test_start_fails_only_when_nothing_loads_and_lists_every_reason(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path)
    for version in ("1", "2"):
        corrupt(repo / "digits" / version / "model.onnx")
    with pytest.raises(BackendError) as caught:
        asyncio.run(OnnxEmbeddedBackend(repo, providers=CPU).start())
    error = caught.value
    assert error.kind is ErrorKind.UNAVAILABLE
    assert f"no model in {repo} could be loaded" in error.message
    for version in ("1", "2"):
        assert str(repo / "digits" / version / "model.onnx") in error.message


def test_empty_repository_fails_start_saying_what_it_expected(tmp_path: Path) -> None:
    with pytest.raises(BackendError) as caught:
        asyncio.run(OnnxEmbeddedBackend(tmp_path, providers=CPU).start())
    assert caught.value.kind is ErrorKind.UNAVAILABLE
    assert "no model found" in caught.value.message and "config.pbtxt" in caught.value.message
