"""Fail safe: a request is only served by a version that a flag or the operator chose.

A cold start with Redis down and no snapshot used to forward requests without a version, so the
backend served its newest version (the candidate) to everyone. These run the real sidecar process
(embedded engine) against a Redis nobody listens on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import free_port, wait_until
from support import ROOT
from tritonclient.utils import InferenceServerException

from sidecar.launcher import SidecarProcess

PIXELS = np.zeros((1, 64), np.float32)


def dead_redis() -> list[str]:
    return ["--redis-url", f"redis://127.0.0.1:{free_port()}/0"]


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        return int(reply.status)


def infer(address: str, user: str) -> Any:
    client = triton.InferenceServerClient(address)
    tensor = triton.InferInput("pixels", [1, 64], "FP32")
    tensor.set_data_from_numpy(PIXELS)
    try:
        return client.infer("digits", [tensor], headers={"x-user-id": user}).get_response()
    finally:
        client.close()


def test_cold_start_without_flags_refuses_instead_of_serving_the_newest_version(
    tmp_path: Path,
) -> None:
    with SidecarProcess(dead_redis(), stderr_path=tmp_path / "sidecar.log") as sidecar:
        assert health(sidecar.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(InferenceServerException) as caught:
            infer(sidecar.address, "user-1")
    assert "FAILED_PRECONDITION" in str(caught.value.status())
    message = caught.value.message()
    assert "model 'digits' has no flag" in message
    assert "--stable digits=VERSION" in message and "--bootstrap-flags" in message
    log = (tmp_path / "sidecar.log").read_text()
    assert "no flags loaded and no --stable version configured" in log


def test_stable_pin_serves_the_operators_version_to_everyone(tmp_path: Path) -> None:
    args = [*dead_redis(), "--stable", "digits=1"]
    with SidecarProcess(args, stderr_path=tmp_path / "sidecar.log") as sidecar:
        wait_until(
            lambda: health(sidecar.address) == health_pb2.HealthCheckResponse.SERVING,
            timeout=10,
            what="SERVING with a stable pin",
        )
        responses = [infer(sidecar.address, f"user-{i}") for i in range(30)]
    assert {r.model_version for r in responses} == {"1"}
    assert {r.parameters["trafficsplit.reason"].string_param for r in responses} == {"STABLE"}
    assert {r.parameters["trafficsplit.membership"].string_param for r in responses} == {
        "unflagged"
    }


def test_bootstrap_flags_serve_until_redis_answers(tmp_path: Path) -> None:
    args = [*dead_redis(), "--bootstrap-flags", str(ROOT / "deploy" / "flags" / "digits.json")]
    with SidecarProcess(args, stderr_path=tmp_path / "sidecar.log") as sidecar:
        wait_until(
            lambda: health(sidecar.address) == health_pb2.HealthCheckResponse.SERVING,
            timeout=10,
            what="SERVING from bootstrap flags",
        )
        allow_listed = infer(sidecar.address, "alice@example.com")
        others = [infer(sidecar.address, f"user-{i}") for i in range(50)]
    assert allow_listed.model_version == "2"  # the bootstrap flag's dogfood rule
    assert {r.parameters["trafficsplit.flag"].string_param for r in others} == {"digits"}
    assert {r.model_version for r in others} == {"1", "2"}  # its 80/20 split


def test_passthrough_is_an_explicit_opt_in(tmp_path: Path) -> None:
    args = [*dead_redis(), "--unflagged", "passthrough"]
    with SidecarProcess(args, stderr_path=tmp_path / "sidecar.log") as sidecar:
        response = infer(sidecar.address, "user-1")
    assert response.parameters["trafficsplit.reason"].string_param == "NO_FLAG"


def test_bad_settings_exit_with_a_usage_message(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited with 2"):
        SidecarProcess(["--stable", "digits"], stderr_path=tmp_path / "sidecar.log").start()
    assert "--stable takes MODEL=VERSION" in (tmp_path / "sidecar.log").read_text()
