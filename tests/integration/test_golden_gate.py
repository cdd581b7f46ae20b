"""``flagctl golden`` against a real redis-server and the embedded engine, run as a process.

A test-only model repository whose version 2 answers a constant label (built with onnx.helper)
is blocked; v1 vs v2 of digits pass within the tolerance with the numbers computed offline;
both results are stored at ``<prefix>golden:<flag>``. Bad input gets one line, no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from servers import RedisServer
from support import ROOT, digits_flag

DIGITS = ROOT / "triton_models" / "digits"
GOLDEN = np.load(DIGITS / "golden.npz")
CONSTANT = 3
pytestmark = pytest.mark.redis


def constant_model(path: Path, label: int) -> None:
    """pixels [N, 64] -> probabilities [N, 10] one-hot at ``label``, label [N, 1] = ``label``."""
    bias = np.zeros(10, np.float32)
    bias[label] = 1.0
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["pixels", "zeros"], ["scaled"]),
            helper.make_node("Add", ["scaled", "bias"], ["probabilities"]),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=1),
        ],
        "constant",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [None, 64])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10]),
            helper.make_tensor_value_info("label", TensorProto.INT64, [None, 1]),
        ],
        [
            helper.make_tensor("zeros", TensorProto.FLOAT, [64, 10], np.zeros(640).tolist()),
            helper.make_tensor("bias", TensorProto.FLOAT, [10], bias.tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def worse_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits v1 as it is, and a v2 that always answers CONSTANT."""
    root = tmp_path_factory.mktemp("repo")
    (root / "digits" / "1").mkdir(parents=True)
    shutil.copy(DIGITS / "config.pbtxt", root / "digits" / "config.pbtxt")
    shutil.copy(DIGITS / "golden.npz", root / "digits" / "golden.npz")
    shutil.copy(DIGITS / "1" / "model.onnx", root / "digits" / "1" / "model.onnx")
    constant_model(root / "digits" / "2" / "model.onnx", CONSTANT)
    return root


def offline_labels(version: str) -> np.ndarray:
    session = ort.InferenceSession(str(DIGITS / version / "model.onnx"))
    pixels = GOLDEN["pixels"].astype(np.float32)
    return np.asarray(session.run(["label"], {"pixels": pixels})[0]).reshape(-1)


def flagctl(redis: RedisServer, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRAFFICSPLIT_REDIS_URL": redis.url, "TRAFFICSPLIT_REDIS_PREFIX": prefix}
    return subprocess.run(
        [sys.executable, "-m", "flagctl", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def apply(redis: RedisServer, prefix: str, tmp_path: Path, **overrides: Any) -> None:
    path = tmp_path / "flag.json"
    path.write_text(json.dumps(digits_flag(**overrides)))
    done = flagctl(redis, prefix, "apply", str(path), "--reason", "test")
    assert done.returncode == 0, done.stderr


def stored(redis: RedisServer, prefix: str) -> dict[str, Any]:
    raw = redis.client().get(f"{prefix}golden:digits")
    assert raw is not None
    document: dict[str, Any] = json.loads(raw)
    return document


def test_a_constant_candidate_is_blocked_and_the_verdict_stored(
    redis_server: RedisServer, prefix: str, tmp_path: Path, worse_repository: Path
) -> None:
    apply(redis_server, prefix, tmp_path)
    done = flagctl(redis_server, prefix, "golden", "digits", "--model-repository",
                   str(worse_repository), "--json")  # fmt: skip
    assert done.returncode == 4, done.stderr
    labels = GOLDEN["labels"]
    result = json.loads(done.stdout)
    assert result == stored(redis_server, prefix) | {"stored_at": f"{prefix}golden:digits"}
    assert result["verdict"] == "fail"
    assert result["candidate"]["correct"] == int(np.sum(labels == CONSTANT))
    assert result["control"]["correct"] == int(np.sum(offline_labels("1") == labels))
    assert result["agreement"] == float(np.mean(offline_labels("1") == CONSTANT))
    assert "below control's" in result["reasons"][0]
    assert result["flag_revision"] > 0 and result["timestamp"] > 0
    assert result["candidate"]["p99_ms"] >= result["candidate"]["p50_ms"] > 0


def test_digits_v2_passes_against_v1_within_the_tolerance(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    apply(redis_server, prefix, tmp_path, golden={"max_accuracy_drop": 0.01})
    done = flagctl(redis_server, prefix, "golden", "digits")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout
    result = stored(redis_server, prefix)
    labels = GOLDEN["labels"]
    v1, v2 = offline_labels("1"), offline_labels("2")
    assert result["verdict"] == "pass"
    assert result["control"]["accuracy"] == float(np.mean(v1 == labels))
    assert result["candidate"]["accuracy"] == float(np.mean(v2 == labels))
    assert result["agreement"] == float(np.mean(v1 == v2))
    assert result["samples"] == len(labels)
    assert (result["control"]["version"], result["candidate"]["version"]) == ("1", "2")


def test_bad_input_gets_one_line_and_nothing_is_stored(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    apply(redis_server, prefix, tmp_path)
    missing = flagctl(redis_server, prefix, "golden", "digits", "--file", str(tmp_path / "x.npz"))
    unknown = flagctl(redis_server, prefix, "golden", "nope")
    candidate = flagctl(redis_server, prefix, "golden", "digits", "--candidate", "control")
    for done, message in (
        (missing, "not found"),
        (unknown, "nope"),
        (candidate, "is the default variant"),
    ):
        assert done.returncode == 1, done.stderr
        assert message in done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert redis_server.client().get(f"{prefix}golden:digits") is None
