"""The request path tells the truth in the unhappy paths, against a real tritonserver.

A candidate that is slow, or that the backend does not have, is answered by the default
version with no error; the response, the span a real OTLP receiver gets, and the metrics each say
so (served version, ``trafficsplit.fallback`` and its cause, readiness).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from otlp_receiver import OtlpReceiver
from servers import wait_until
from support import digits_flag, scrape
from triton_harness import TritonServer
from tritonclient.utils import InferenceServerException

from sidecar.launcher import SidecarProcess

PIXELS = np.zeros((1, 64), np.float32)
ALL_ON_CANDIDATE = {"rules": [], "allocation": {"split": {"control": 0, "candidate": 100}}}


def flag_file(tmp_path: Path) -> Path:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(digits_flag(**ALL_ON_CANDIDATE)))
    return path


def infer(client: triton.InferenceServerClient, user: str, timeout_s: float) -> Any:
    tensor = triton.InferInput("pixels", [1, 64], "FP32")
    tensor.set_data_from_numpy(PIXELS)
    return client.infer(
        "digits", [tensor], headers={"x-user-id": user}, client_timeout=timeout_s
    ).get_response()


def test_slow_candidate_is_answered_by_the_default_within_the_deadline(
    slow_candidate_triton: TritonServer, tmp_path: Path
) -> None:
    otlp = OtlpReceiver().start()
    args = ["--triton-url", slow_candidate_triton.grpc_url, "--flags-file", str(flag_file(tmp_path)),
            "--metrics-listen", "127.0.0.1:0"]  # fmt: skip
    try:
        with SidecarProcess(
            args, env=otlp.exporter_env("slow"), stderr_path=tmp_path / "sidecar.log"
        ) as sidecar:
            client = triton.InferenceServerClient(sidecar.address)
            started = time.monotonic()
            responses = [infer(client, f"user-{i}", timeout_s=1.0) for i in range(3)]
            took = time.monotonic() - started
            client.close()
            spans = wait_until(
                lambda: (
                    [s for s in otlp.spans("slow") if s.name == "ModelInfer digits"][:3]
                    if len([s for s in otlp.spans("slow") if s.name == "ModelInfer digits"]) >= 3
                    else None
                ),
                timeout=10,
                what="three SERVER spans at the OTLP receiver",
            )
            metrics = scrape(sidecar.metrics_url)
    finally:
        otlp.stop()
    # No DEADLINE_EXCEEDED: each candidate attempt got half the deadline, then v1 answered.
    assert [r.model_version for r in responses] == ["1", "1", "1"]
    for response in responses:
        assert response.parameters["trafficsplit.variant"].string_param == "candidate"
        assert response.parameters["trafficsplit.fallback"].bool_param is True
        assert response.parameters["trafficsplit.fallback_cause"].string_param == "timeout"
    assert took < 3 * 1.0
    # The span a tracing UI shows says what served, and that it was a fallback.
    for span in spans:
        assert span.attributes["ml.model.version"] == "1"
        assert span.attributes["trafficsplit.fallback"] is True
        assert span.attributes["trafficsplit.fallback.cause"] == "timeout"
        assert span.attributes["trafficsplit.attempted.version"] == "2"
    timeouts = (
        "trafficsplit_attempts_total",
        (("backend", "triton"), ("flag", "digits"), ("membership", "exposed"),
         ("model", "digits"), ("result", "DEADLINE_EXCEEDED"), ("version", "2")),
    )  # fmt: skip
    assert metrics[timeouts] == 3  # counted against the candidate, though users were served


def test_flag_routing_to_a_version_triton_lacks_shows_in_readiness_and_falls_back(
    triton_v1_only: TritonServer, tmp_path: Path
) -> None:
    args = ["--triton-url", triton_v1_only.grpc_url, "--flags-file", str(flag_file(tmp_path)),
            "--metrics-listen", "127.0.0.1:0"]  # fmt: skip
    with SidecarProcess(args, stderr_path=tmp_path / "sidecar.log") as sidecar:
        ready_key = ("trafficsplit_version_ready", (("target", "digits:2"),))
        wait_until(
            lambda: scrape(sidecar.metrics_url).get(ready_key) == 0,
            timeout=10,
            what="digits:2 reported not ready",
        )
        client = triton.InferenceServerClient(sidecar.address)
        responses = [infer(client, f"user-{i}", timeout_s=5.0) for i in range(20)]
        client.close()
        metrics = scrape(sidecar.metrics_url)
    log = (tmp_path / "sidecar.log").read_text()
    assert {r.model_version for r in responses} == {"1"}
    assert {r.parameters["trafficsplit.fallback_cause"].string_param for r in responses} == {
        "not_ready"
    }
    assert metrics[("trafficsplit_version_ready", (("target", "digits:1"),))] == 1
    skipped = (
        "trafficsplit_attempts_total",
        (("backend", "triton"), ("flag", "digits"), ("membership", "exposed"),
         ("model", "digits"), ("result", "NOT_READY"), ("version", "2")),
    )  # fmt: skip
    assert metrics[skipped] == 20
    assert log.count("version 2, which a flag routes to, is not ready") == 1  # logged once


def test_default_version_missing_fails_readiness_when_required(
    triton_v1_only: TritonServer, tmp_path: Path
) -> None:
    path = tmp_path / "flags.json"
    doc = digits_flag(default_variant="candidate", rules=[], allocation=None)
    doc.pop("ramp", None)
    doc.pop("shadow", None)
    path.write_text(json.dumps(doc))
    args = ["--triton-url", triton_v1_only.grpc_url, "--flags-file", str(path),
            "--require-default-ready"]  # fmt: skip
    with SidecarProcess(args, stderr_path=tmp_path / "sidecar.log") as sidecar:
        client = triton.InferenceServerClient(sidecar.address)
        wait_until(
            lambda: (
                "default versions not ready: digits:2" in (tmp_path / "sidecar.log").read_text()
            ),
            timeout=10,
            what="NOT_SERVING logged with the reason",
        )
        assert client.is_server_ready() is False
        with pytest.raises(InferenceServerException):
            infer(client, "user-1", timeout_s=5.0)  # v2 is the default: nothing to fall back to
        client.close()
