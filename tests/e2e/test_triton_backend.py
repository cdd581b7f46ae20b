"""TritonBackend against a real tritonserver (python backend running the same ONNX files)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped, unused-ignore]
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as triton_grpc
from support import decode, make_request
from triton_harness import (
    TritonHarnessError,
    TritonInstall,
    TritonServer,
    build_python_backend_repository,
)

from sidecar.backends.base import BackendError, ErrorKind, InferenceBackend
from sidecar.backends.onnx_embedded import OnnxEmbeddedBackend
from sidecar.backends.triton import TritonBackend, translate_error

pytestmark = pytest.mark.triton

REPO = Path(__file__).resolve().parents[2] / "triton_models"
MAX_BATCH = 64
T = TypeVar("T")
Scenario = Callable[[InferenceBackend], Awaitable[T]]


@pytest.fixture(scope="module")
def golden() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    with np.load(REPO / "digits" / "golden.npz") as data:
        return data["pixels"], data["labels"]


async def _using(backend: InferenceBackend, scenario: Scenario[T]) -> T:
    await backend.start()
    try:
        return await scenario(backend)
    finally:
        await backend.close()


def on_triton(url: str, scenario: Scenario[T], **options: Any) -> T:
    return asyncio.run(_using(TritonBackend(url, **options), scenario))


def on_embedded(scenario: Scenario[T]) -> T:
    backend = OnnxEmbeddedBackend(REPO, providers=["CPUExecutionProvider"])
    return asyncio.run(_using(backend, scenario))


def golden_predictions(pixels: npt.NDArray[np.float32]) -> Scenario[dict[str, Any]]:
    """A scenario returning, per version, concatenated outputs over the whole golden set."""

    async def scenario(backend: InferenceBackend) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for version in ("1", "2"):
            chunks = []
            for start in range(0, len(pixels), MAX_BATCH):
                request = make_request(
                    pixels[start : start + MAX_BATCH], version=version, request_id="golden"
                )
                response = await backend.infer(request, timeout=30)
                assert (response.model_name, response.model_version) == ("digits", version)
                assert response.id == "golden"
                chunks.append(decode(response))
            results[version] = {n: np.concatenate([c[n] for c in chunks]) for n in chunks[0]}
        return results

    return scenario


async def infer_error(backend: InferenceBackend, request: Any, timeout: float = 10) -> BackendError:
    with pytest.raises(BackendError) as caught:
        await backend.infer(request, timeout=timeout)
    return caught.value


def test_triton_matches_the_embedded_engine_on_the_golden_set(
    triton_server: TritonServer, golden: Any
) -> None:
    pixels, labels = golden
    remote = on_triton(triton_server.grpc_url, golden_predictions(pixels))
    local = on_embedded(golden_predictions(pixels))
    for version in ("1", "2"):
        np.testing.assert_array_equal(remote[version]["label"], local[version]["label"])
        np.testing.assert_allclose(
            remote[version]["probabilities"], local[version]["probabilities"], atol=1e-6
        )
        assert np.mean(remote[version]["label"][:, 0] == labels) >= 0.85  # v1 weak on purpose
    assert np.any(remote["1"]["label"] != remote["2"]["label"]), "Triton ran one version twice"


def test_readiness_metadata_and_config(triton_server: TritonServer) -> None:
    async def scenario(backend: InferenceBackend) -> Any:
        ready = [
            await backend.server_ready(),
            await backend.model_ready("digits", "1"),
            await backend.model_ready("digits", "2"),
            await backend.model_ready("digits", "3"),
            await backend.model_ready("nope", ""),
        ]
        metadata = await backend.model_metadata("digits", "2")
        return ready, metadata, await backend.model_config("digits", "")

    ready, metadata, config = on_triton(triton_server.grpc_url, scenario)
    assert ready == [True, True, True, False, False]
    assert metadata.name == "digits"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("pixels", "FP32", [-1, 64])
    ]
    assert config.config.max_batch_size == MAX_BATCH
    assert list(config.config.version_policy.specific.versions) == [1, 2]


def test_unknown_model_is_not_found(triton_server: TritonServer, golden: Any) -> None:
    request = make_request(golden[0][:1], version="", model="nope", request_id="golden")
    error = on_triton(triton_server.grpc_url, lambda b: infer_error(b, request))
    assert error.kind is ErrorKind.NOT_FOUND
    assert "'nope'" in error.message
    assert error.backend == "triton"


def test_bad_tensor_is_invalid_argument(triton_server: TritonServer, golden: Any) -> None:
    request = make_request(golden[0][:2, :63].copy(), version="1", request_id="golden")
    error = on_triton(triton_server.grpc_url, lambda b: infer_error(b, request))
    assert error.kind is ErrorKind.INVALID_ARGUMENT
    assert "[2,63]" in error.message  # Triton's own words travel with the error
    assert not error.fallback_eligible


def test_bytes_triton_cannot_parse_are_the_callers_fault(
    triton_server: TritonServer, golden: Any
) -> None:
    # An unknown group holding a field numbered 0: upb (and so the sidecar's wire reader) accepts
    # it, Triton's C++ parser refuses it with INTERNAL "Unable to parse request".
    raw = make_request(golden[0][:1], version="2").SerializeToString() + b"\x4b\x00\x00\x4c"

    async def scenario(backend: InferenceBackend) -> BackendError:
        assert isinstance(backend, TritonBackend)
        with pytest.raises(BackendError) as caught:
            await backend.infer_raw(raw, timeout=10, what="model 'digits' version '2'")
        return caught.value

    error = on_triton(triton_server.grpc_url, scenario)
    assert error.kind is ErrorKind.INVALID_ARGUMENT and not error.fallback_eligible
    assert error.message.startswith("malformed request: Triton could not parse")
    assert "Unable to parse request" in error.message and "\n" not in error.message


def test_unresponsive_triton_is_deadline_exceeded(golden: Any) -> None:
    # A socket that accepts connections but never speaks: the call can only end by its deadline.
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen()
        url = f"127.0.0.1:{black_hole.getsockname()[1]}"
        request = make_request(golden[0][:1], version="1", request_id="golden")
        error = on_triton(url, lambda b: infer_error(b, request, timeout=0.3))
    assert error.kind is ErrorKind.DEADLINE_EXCEEDED
    assert url in error.message and error.fallback_eligible


def test_oversized_message_is_resource_exhausted(triton_server: TritonServer, golden: Any) -> None:
    request = make_request(
        golden[0][:MAX_BATCH], version="1", request_id="golden"
    )  # 16 KiB of pixels
    error = on_triton(
        triton_server.grpc_url, lambda b: infer_error(b, request), max_message_bytes=1024
    )
    assert error.kind is ErrorKind.RESOURCE_EXHAUSTED


def test_version_not_on_triton_is_fallback_eligible(
    triton_v1_only: TritonServer, golden: Any
) -> None:
    async def scenario(backend: InferenceBackend) -> Any:
        served = await backend.infer(
            make_request(golden[0][:1], version="1", request_id="golden"), timeout=10
        )
        missing = await infer_error(
            backend, make_request(golden[0][:1], version="2", request_id="golden")
        )
        return served, missing, await backend.model_ready("digits", "2")

    served, error, v2_ready = on_triton(triton_v1_only.grpc_url, scenario)
    assert served.model_version == "1"
    assert error.kind in (ErrorKind.NOT_FOUND, ErrorKind.UNAVAILABLE)
    assert error.fallback_eligible
    assert "'digits'" in error.message and "'2'" in error.message
    assert v2_ready is False


def test_stopped_triton_is_unavailable_naming_the_url(
    triton_v1_only: TritonServer, golden: Any
) -> None:
    url = triton_v1_only.grpc_url

    async def scenario(backend: InferenceBackend) -> Any:
        served = await backend.infer(
            make_request(golden[0][:1], version="1", request_id="golden"), timeout=10
        )
        triton_v1_only.stop()
        error = await infer_error(
            backend, make_request(golden[0][:1], version="1", request_id="golden")
        )
        return served, error, await backend.server_ready()

    served, error, ready = on_triton(url, scenario)
    assert served.model_version == "1"
    assert error.kind is ErrorKind.UNAVAILABLE
    assert url in error.message
    assert error.fallback_eligible
    assert ready is False


def test_plain_tritonclient_works_against_the_harness(
    triton_server: TritonServer, golden: Any
) -> None:
    pixels = golden[0][:8]
    client = triton_grpc.InferenceServerClient(triton_server.grpc_url)
    try:
        tensor = triton_grpc.InferInput("pixels", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)
        result = client.infer("digits", [tensor], model_version="2")
    finally:
        client.close()

    async def scenario(backend: InferenceBackend) -> Any:
        return decode(
            await backend.infer(make_request(pixels, version="2", request_id="golden"), timeout=10)
        )

    expected = on_embedded(scenario)
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), expected["probabilities"], atol=1e-6
    )


@pytest.mark.parametrize(
    ("code", "details", "kind"),
    [
        # Older Tritons: unknown model / unloaded version with other status codes than NOT_FOUND.
        ("INVALID_ARGUMENT", "Request for unknown model: 'nope' is not found", "NOT_FOUND"),
        ("UNAVAILABLE", "Request for unknown model: 'digits' version 2 is not found", "NOT_FOUND"),
        (
            "UNAVAILABLE",
            "Request for unknown model: 'digits' version 2 is not at ready state",
            "NOT_FOUND",
        ),
        ("UNAVAILABLE", "failed to connect to all addresses", "UNAVAILABLE"),
        ("INVALID_ARGUMENT", "unexpected shape for input 'pixels'", "INVALID_ARGUMENT"),
        ("RESOURCE_EXHAUSTED", "Sent message larger than max", "RESOURCE_EXHAUSTED"),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", "DEADLINE_EXCEEDED"),
        ("UNKNOWN", "Exception calling application", "INTERNAL"),
        # Triton's protobuf parser refused the bytes: the sender's fault, whatever the code.
        ("INTERNAL", "Unable to parse request", "INVALID_ARGUMENT"),
        ("INVALID_ARGUMENT", "failed to parse the request", "INVALID_ARGUMENT"),
        ("INTERNAL", "onnxruntime failed to parse tensor 'x'", "INTERNAL"),
        ("CANCELLED", "Cancelled", "INTERNAL"),
    ],
)
def test_grpc_errors_are_translated_by_code_and_triton_wording(
    code: str, details: str, kind: str
) -> None:
    status = getattr(grpc.StatusCode, code)
    exc = grpc.aio.AioRpcError(status, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
    error = translate_error(exc, url="triton:8001", what="model 'digits'", timeout=1.0)
    assert error.kind is ErrorKind(kind)
    assert error.backend == "triton"
    assert details in error.message or kind == "DEADLINE_EXCEEDED"
    if kind == "UNAVAILABLE":
        assert "triton:8001" in error.message


def test_missing_triton_venv_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(TritonHarnessError, match=r"run `make triton-venv`"):
        TritonInstall(tmp_path / "no-venv").check()


def test_triton_that_cannot_load_the_model_fails_fast_with_its_log(
    triton_install: TritonInstall, tmp_path: Path
) -> None:
    repository = build_python_backend_repository(tmp_path / "repository", versions=(1,))
    config = repository / "digits" / "config.pbtxt"
    config.write_text(config.read_text().replace(str(REPO), str(tmp_path / "no-models")))
    server = TritonServer(repository, install=triton_install, ready_timeout_s=60)
    try:
        with pytest.raises(TritonHarnessError, match="exited") as caught:
            server.start()
    finally:
        server.stop()
    assert "no-models" in str(caught.value)  # the log tail came with the error
