"""Shadow traffic end to end: real sidecar processes, the embedded engine and a real tritonserver.

The agreement the sidecar measures equals the agreement computed offline with onnxruntime on the
same inputs; a shadow version that takes 2 s per call never shows in the callers' latency; with a
concurrency of 1 the rest of a burst is dropped and counted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton
from servers import wait_until
from support import ROOT, digits_flag
from triton_harness import TritonServer

from sidecar.launcher import SidecarProcess

GOLDEN = np.load(ROOT / "triton_models" / "digits" / "golden.npz")
PIXELS = GOLDEN["pixels"].astype(np.float32)


def offline_labels(version: str) -> np.ndarray:
    path = ROOT / "triton_models" / "digits" / version / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["label"], {"pixels": PIXELS})[0]).reshape(-1)


def flag_file(tmp_path: Path, **shadow: Any) -> Path:
    doc = digits_flag(rules=[], allocation={"split": {"control": 100, "candidate": 0}})
    doc["shadow"] = {"variant": "candidate", "percent": 100, **shadow}
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(doc))
    return path


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    text = urlopen(url, timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def shadow_count(metrics: dict[Any, float], name: str, **labels: str) -> float:
    """Sum of ``name`` over the samples whose labels include ``labels``."""
    return sum(
        v for (n, lab), v in metrics.items() if n == name and set(labels.items()) <= set(lab)
    )


def infer(client: triton.InferenceServerClient, index: int, user: str) -> Any:
    tensor = triton.InferInput("pixels", [1, 64], "FP32")
    tensor.set_data_from_numpy(PIXELS[index : index + 1])
    return client.infer("digits", [tensor], headers={"x-user-id": user}, client_timeout=5)


def test_measured_agreement_equals_the_offline_agreement(tmp_path: Path) -> None:
    expected_agree = int(np.sum(offline_labels("1") == offline_labels("2")))
    args = ["--flags-file", str(flag_file(tmp_path, max_concurrency=64)),
            "--metrics-listen", "127.0.0.1:0"]  # fmt: skip
    with SidecarProcess(args, stderr_path=tmp_path / "sidecar.log") as sidecar:
        client = triton.InferenceServerClient(sidecar.address)
        served = [infer(client, i, f"user-{i}").as_numpy("label")[0, 0] for i in range(len(PIXELS))]
        client.close()
        name = "trafficsplit_shadow_comparisons_total"
        metrics = wait_until(
            lambda: (
                (m := scrape(sidecar.metrics_url))
                and shadow_count(m, name, flag="digits") == len(PIXELS)
                and m
            ),
            timeout=30,
            what="every request's shadow answer compared",
        )
    assert list(served) == list(offline_labels("1"))  # the callers got v1's answers, unchanged
    labels = {"flag": "digits", "served_version": "1", "shadow_version": "2"}
    assert shadow_count(metrics, name, **labels, verdict="agree") == expected_agree
    assert shadow_count(metrics, name, **labels, verdict="disagree") == len(PIXELS) - expected_agree
    assert shadow_count(metrics, "trafficsplit_shadow_dropped_total") == 0
    assert shadow_count(metrics, "trafficsplit_shadow_errors_total") == 0
    assert 0 < expected_agree < len(PIXELS)  # the two models do differ: the count means something


def test_a_slow_shadow_never_delays_callers_and_a_burst_beyond_one_is_dropped(
    slow_candidate_triton: TritonServer, tmp_path: Path
) -> None:
    args = ["--triton-url", slow_candidate_triton.grpc_url,
            "--flags-file", str(flag_file(tmp_path, max_concurrency=1)),
            "--metrics-listen", "127.0.0.1:0", "--shadow-timeout-s", "30"]  # fmt: skip
    sample = 7
    with SidecarProcess(args, stderr_path=tmp_path / "sidecar.log") as sidecar:
        client = triton.InferenceServerClient(sidecar.address)
        infer(client, 0, "warm-up")  # connects; its shadow call takes the one slot for 2 s
        wait_until(
            lambda: (
                shadow_count(scrape(sidecar.metrics_url), "trafficsplit_shadow_comparisons_total")
                == 1
            ),
            timeout=30,
            what="the warm-up's shadow call to finish",
        )
        latencies = []
        for i in range(5):
            started = time.perf_counter()
            result = infer(client, sample, f"user-{i}")
            latencies.append(time.perf_counter() - started)
            assert result.get_response().model_version == "1"
        client.close()
        # The first of the burst is mirrored (2 s on v2), the other four find the slot taken.
        burst_done = time.perf_counter()
        metrics = wait_until(
            lambda: (
                (m := scrape(sidecar.metrics_url))
                and shadow_count(m, "trafficsplit_shadow_comparisons_total") == 2
                and m
            ),
            timeout=30,
            what="the burst's one shadow call to finish",
        )
        shadow_finished_after = time.perf_counter() - burst_done
    assert max(latencies) < 1.0, latencies  # v2 sleeps 2 s per call: no caller waited for it
    assert shadow_finished_after > 0.5  # the shadow answer came after every caller's
    assert shadow_count(metrics, "trafficsplit_shadow_dropped_total", flag="digits") == 4
    assert shadow_count(metrics, "trafficsplit_shadow_errors_total") == 0
    duration = shadow_count(
        metrics, "trafficsplit_shadow_duration_seconds_sum", flag="digits", version="2"
    )
    assert duration >= 2 * 2.0  # two shadow calls of at least 2 s each
    same = bool(offline_labels("1")[sample] == offline_labels("2")[sample])
    first = bool(offline_labels("1")[0] == offline_labels("2")[0])
    agree = shadow_count(metrics, "trafficsplit_shadow_comparisons_total", verdict="agree")
    assert agree == int(same) + int(first)  # raw Triton replies parsed and compared correctly
