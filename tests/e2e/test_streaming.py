"""ModelStreamInfer through a real sidecar to a real tritonserver serving a decoupled model.

``tokens`` (tests/triton_harness.py) streams ``count`` responses per request, each tagged with
its version. The flag's control is version 1, its candidate version 2. A tritonclient user opens a
stream with its user id in the metadata and gets every response from its cohort's version, with
the assignment parameters on each; a candidate that fails before its first response (or that
Triton does not have) is answered by version 1; a failure after the first response reaches the
client; spans and metrics count the stream once.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from otlp_receiver import OtlpReceiver
from servers import wait_until
from support import ROOT, digits_flag, scrape
from triton_harness import (
    TOKENS_MODEL,
    TritonInstall,
    TritonServer,
    build_tokens_repository,
)
from tritonclient.grpc import service_pb2 as kserve

from sidecar.launcher import SidecarProcess

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def fail_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """While this file exists, tokens version 2 fails before its first response."""
    return tmp_path_factory.mktemp("fail") / "v2-fails"


@pytest.fixture(scope="module")
def tokens_triton(
    triton_install: TritonInstall, tmp_path_factory: pytest.TempPathFactory, fail_file: Path
) -> Iterator[TritonServer]:
    repository = build_tokens_repository(
        tmp_path_factory.mktemp("tokens"), (1, 2), fail_files={2: fail_file}
    )
    with TritonServer(repository, model=TOKENS_MODEL, install=triton_install) as server:
        yield server


def tokens_flag(split: dict[str, int], candidate_version: str = "2") -> dict[str, Any]:
    return digits_flag(
        key=TOKENS_MODEL,
        description="Streaming test model: control v1, candidate v2.",
        variants={
            "control": {"model": TOKENS_MODEL, "version": "1"},
            "candidate": {"model": TOKENS_MODEL, "version": candidate_version},
        },
        rules=[],
        allocation={"coverage": 100, "split": split},
    )


def start_sidecar(
    tmp_path: Path, triton_url: str, flag: dict[str, Any], env: dict[str, str] | None = None
) -> SidecarProcess:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(flag))
    args = ["--triton-url", triton_url, "--flags-file", str(path), "--metrics-listen", "127.0.0.1:0"]  # fmt: skip
    return SidecarProcess(args, env=env, stderr_path=tmp_path / "sidecar.log")


def tensors(count: int, fail_at: int | None = None) -> list[triton.InferInput]:
    inputs = [triton.InferInput("count", [1], "INT32")]
    inputs[0].set_data_from_numpy(np.array([count], np.int32))
    if fail_at is not None:
        inputs.append(triton.InferInput("fail_at", [1], "INT32"))
        inputs[1].set_data_from_numpy(np.array([fail_at], np.int32))
    return inputs


def stream(
    address: str, user: str, requests: list[tuple[int, int | None]], *, version: str = ""
) -> list[tuple[Any, Exception | None]]:
    """One tritonclient stream: send every request, then wait for the stream to end."""
    received: queue.Queue[tuple[Any, Exception | None]] = queue.Queue()
    client = triton.InferenceServerClient(address)
    client.start_stream(
        callback=lambda result, error: received.put((result, error)),
        headers={"x-user-id": user},
        stream_timeout=TIMEOUT_S,
    )
    for count, fail_at in requests:
        client.async_stream_infer(TOKENS_MODEL, tensors(count, fail_at), model_version=version)
    client.stop_stream()  # half-closes, then waits until the sidecar ends the stream
    client.close()
    return [received.get_nowait() for _ in range(received.qsize())]


def version_of(result: Any) -> int:
    return int(result.as_numpy("version")[0])


def parameters(result: Any) -> dict[str, Any]:
    params = result.get_response().parameters
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in params.items()}


def raw_request(count: int, *, model: str = TOKENS_MODEL) -> bytes:
    request = kserve.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="count", datatype="INT32")
    tensor.shape.append(1)
    request.raw_input_contents.append(np.array([count], np.int32).tobytes())
    return bytes(request.SerializeToString())


def raw_stream(address: str, messages: list[bytes]) -> tuple[list[bytes], grpc.RpcError | None]:
    """A raw gRPC stream (bytes in, bytes out): what any client could send."""
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(STREAM)(
            iter(messages), metadata=(("x-user-id", "raw-user"),), timeout=TIMEOUT_S
        )
        responses: list[bytes] = []
        try:
            responses.extend(call)
        except grpc.RpcError as exc:
            return responses, exc
        return responses, None


def test_every_response_comes_from_the_cohorts_version_with_the_assignment(
    tokens_triton: TritonServer, tmp_path: Path
) -> None:
    flag = tokens_flag({"control": 50, "candidate": 50})
    with start_sidecar(tmp_path, tokens_triton.grpc_url, flag) as sidecar:
        results = {f"user-{i}": stream(sidecar.address, f"user-{i}", [(3, None), (2, None)])
                   for i in range(12)}  # fmt: skip
        pinned = stream(sidecar.address, "user-0", [(2, None)], version="2")
        metrics = scrape(sidecar.metrics_url)
    cohorts: dict[str, str] = {}
    for user, responses in results.items():
        assert [e for _, e in responses] == [None] * 5, user  # 3 + 2 responses, no error
        variants = {parameters(r)["trafficsplit.variant"] for r, _ in responses}
        assert len(variants) == 1, user  # one cohort per stream
        cohorts[user] = variants.pop()
        expected = 2 if cohorts[user] == "candidate" else 1
        assert {version_of(r) for r, _ in responses} == {expected}
        assert {r.get_response().model_version for r, _ in responses} == {str(expected)}
        assert {parameters(r)["trafficsplit.fallback"] for r, _ in responses} == {False}
        assert {parameters(r)["trafficsplit.membership"] for r, _ in responses} == {"exposed"}
        assert sorted(int(r.as_numpy("index")[0]) for r, _ in responses) == [0, 0, 1, 1, 2]
    assert set(cohorts.values()) == {"control", "candidate"}
    assert [version_of(r) for r, _ in pinned] == [2, 2]  # pinned, whatever the cohort
    assert {parameters(r)["trafficsplit.membership"] for r, _ in pinned} == {"pinned"}
    streams = sum(
        v for (name, labels), v in metrics.items()
        if name == "trafficsplit_requests_total" and ("flag", TOKENS_MODEL) in labels
    )  # fmt: skip
    assert streams == 13  # a stream is one request, whatever its number of messages


def test_candidate_failing_before_its_first_response_falls_back_and_traces_it(
    tokens_triton: TritonServer, tmp_path: Path, fail_file: Path
) -> None:
    otlp = OtlpReceiver().start()
    fail_file.write_text("fail")
    try:
        flag = tokens_flag({"control": 0, "candidate": 100})
        with start_sidecar(
            tmp_path, tokens_triton.grpc_url, flag, env=otlp.exporter_env("streams")
        ) as sidecar:
            # Two requests sent before any response: both are replayed on version 1.
            responses = stream(sidecar.address, "u1", [(2, None), (3, None)])
            spans = wait_until(
                lambda: [s for s in otlp.spans("streams") if s.name == "ModelStreamInfer tokens"],
                timeout=10,
                what="the stream's SERVER span",
            )
            metrics = scrape(sidecar.metrics_url)
        client_spans = [s for s in otlp.spans("streams") if s.trace_id == spans[0].trace_id
                        and s.parent_span_id == spans[0].span_id]  # fmt: skip
    finally:
        fail_file.unlink(missing_ok=True)
        otlp.stop()
    assert [e for _, e in responses] == [None] * 5
    assert {version_of(r) for r, _ in responses} == {1}
    assert {parameters(r)["trafficsplit.variant"] for r, _ in responses} == {"candidate"}
    assert {parameters(r)["trafficsplit.fallback"] for r, _ in responses} == {True}
    assert {parameters(r)["trafficsplit.fallback_cause"] for r, _ in responses} == {"error"}
    [server] = spans
    assert server.attributes["trafficsplit.fallback"] is True
    assert server.attributes["ml.model.version"] == "1"
    assert server.attributes["trafficsplit.cohort"] == "candidate"
    assert sorted(s.attributes["ml.model.version"] for s in client_spans) == ["1", "2"]
    failed = [s for s in client_spans if s.attributes["ml.model.version"] == "2"]
    assert failed[0].status_code == 2  # ERROR: the candidate's stream failed
    assert "injected failure" in failed[0].status_message
    fallbacks = [v for (name, labels), v in metrics.items()
                 if name == "trafficsplit_fallbacks_total" and ("flag", TOKENS_MODEL) in labels]  # fmt: skip
    assert fallbacks == [1.0]


def test_candidate_that_triton_does_not_have_falls_back(
    tokens_triton: TritonServer, tmp_path: Path
) -> None:
    flag = tokens_flag({"control": 0, "candidate": 100}, candidate_version="7")
    with start_sidecar(tmp_path, tokens_triton.grpc_url, flag) as sidecar:
        responses = stream(sidecar.address, "u1", [(2, None)])
    assert [e for _, e in responses] == [None, None]
    assert [version_of(r) for r, _ in responses] == [1, 1]
    assert {parameters(r)["trafficsplit.fallback"] for r, _ in responses} == {True}


def test_a_failure_after_the_first_response_reaches_the_client(
    tokens_triton: TritonServer, tmp_path: Path
) -> None:
    flag = tokens_flag({"control": 0, "candidate": 100})
    with start_sidecar(tmp_path, tokens_triton.grpc_url, flag) as sidecar:
        responses = stream(sidecar.address, "u1", [(3, 1)])  # response 1 is an error
    assert len(responses) == 2
    (first, no_error), (_, error) = responses
    assert no_error is None and version_of(first) == 2
    assert parameters(first)["trafficsplit.fallback"] is False
    assert error is not None and "injected failure at response 1" in str(error)


def test_malformed_messages_end_the_stream_with_invalid_argument(
    tokens_triton: TritonServer, tmp_path: Path
) -> None:
    flag = tokens_flag({"control": 100, "candidate": 0})
    with start_sidecar(tmp_path, tokens_triton.grpc_url, flag) as sidecar:
        first_bad, first_error = raw_stream(sidecar.address, [b"\x0a\x02\xff\xfe"])
        _, later_error = raw_stream(sidecar.address, [raw_request(1), b"\x12\x05ab"])
        _, other_error = raw_stream(
            sidecar.address, [raw_request(1), raw_request(1, model="digits")]
        )
        fine, fine_error = raw_stream(sidecar.address, [raw_request(2)])
    assert first_bad == [] and first_error is not None
    assert first_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message 1 of the stream" in (first_error.details() or "")
    assert later_error is not None and later_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message 2 of the stream" in (later_error.details() or "")
    assert other_error is not None and other_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "open one stream per model" in (other_error.details() or "")
    assert fine_error is None and len(fine) == 2
    decoded = [kserve.ModelStreamInferResponse.FromString(r) for r in fine]
    assert [d.infer_response.parameters["trafficsplit.variant"].string_param for d in decoded] == [
        "control",
        "control",
    ]


def test_the_embedded_engine_answers_unimplemented(tmp_path: Path) -> None:
    flag = tokens_flag({"control": 100, "candidate": 0})
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(flag))
    with SidecarProcess(["--flags-file", str(path)], stderr_path=tmp_path / "log") as sidecar:
        responses, error = raw_stream(sidecar.address, [raw_request(1)])
    assert responses == [] and error is not None
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "only in front of Triton" in (error.details() or "")


def test_the_documented_snippet_runs(tokens_triton: TritonServer, tmp_path: Path) -> None:
    """docs/streaming.md's Python block, run as written against a sidecar for ``tokens``."""
    [code] = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "streaming.md").read_text(), re.S)
    assert "127.0.0.1:8500" in code
    flag = tokens_flag({"control": 50, "candidate": 50})
    with start_sidecar(tmp_path, tokens_triton.grpc_url, flag) as sidecar:
        script = code.replace("127.0.0.1:8500", sidecar.address)
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 0, result.stderr
    printed = re.fullmatch(r"([12]) (control|candidate)\n", result.stdout)
    assert printed is not None, result.stdout
    assert (printed[1] == "2") == (printed[2] == "candidate")
