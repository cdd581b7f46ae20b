"""A real sidecar process records signals that add up to the requests it served.

The embedded engine serves a copy of triton_models/ whose digits v2 is corrupt bytes, so v2 is
not ready: users on the candidate are answered by v1 (fallback), and every one of their requests
counts a failed attempt against v2. Redis killed under load: requests keep being answered, the
backlog stays bounded and what it drops is counted.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families
from servers import RedisServer, wait_until
from support import ROOT, digits_flag

from flags.admin import FlagAdmin
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from flags.schema import parse_flag
from sidecar.launcher import SidecarProcess
from signals.model import Group
from signals.redis_window import read_window_sync

pytestmark = [pytest.mark.redis]

PIXELS = np.load(ROOT / "triton_models" / "digits" / "golden.npz")["pixels"].astype(np.float32)


def broken_candidate_repository(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    shutil.copytree(ROOT / "triton_models", repo, ignore=shutil.ignore_patterns("*.npz"))
    (repo / "digits" / "2" / "model.onnx").write_bytes(b"\x00not an onnx model\xff" * 8)
    return repo


def start_sidecar(
    redis: RedisServer, prefix: str, repo: Path, log: Path, *extra: str
) -> SidecarProcess:
    FlagAdmin(sync_client(redis.url), keys=RedisKeys(prefix)).apply(
        parse_flag(digits_flag(shadow=None)), reason="signals e2e"
    )
    args = ["--redis-url", redis.url, "--redis-prefix", prefix, "--model-repository", str(repo),
            "--metrics-listen", "127.0.0.1:0", *extra]  # fmt: skip
    return SidecarProcess(args, stderr_path=log).start()


def infer(client: triton.InferenceServerClient, user: str, version: str = "") -> Any:
    tensor = triton.InferInput("pixels", [1, 64], "FP32")
    tensor.set_data_from_numpy(PIXELS[:1])
    return client.infer(
        "digits", [tensor], model_version=version, headers={"x-user-id": user}
    ).get_response()


def scrape(url: str, name: str) -> float:
    text = urlopen(url, timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in {url}")


def test_windows_count_every_attempt_against_the_version_attempted(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = f"sig-{uuid.uuid4().hex[:8]}:"
    repo = broken_candidate_repository(tmp_path)
    # A long interval: nothing is flushed while serving, so the window below is what stop() wrote.
    sidecar = start_sidecar(redis_server, prefix, repo, tmp_path / "sidecar.log",
                            "--signals-interval-s", "3600")  # fmt: skip
    start = int(time.time())
    try:
        client = triton.InferenceServerClient(sidecar.address)
        exposed = [infer(client, f"user-{i}") for i in range(100)]
        targeted = [infer(client, "alice@example.com") for _ in range(3)]
        pinned = [infer(client, "u-pin", version="1") for _ in range(2)]
        client.close()
    finally:
        assert sidecar.stop() == 0
    end = int(time.time()) + 1
    served = exposed + targeted + pinned
    assert {r.model_version for r in served} == {"1"}  # nobody saw the broken candidate
    candidates = sum(
        r.parameters["trafficsplit.variant"].string_param == "candidate" for r in exposed
    )
    assert 0 < candidates < 100

    window = read_window_sync(redis_server.client(), prefix, "digits", start, end)
    v1 = window.version("digits", "digits", "1")
    v2 = window.version("digits", "digits", "2")
    # Exposed users: every request attempted its cohort's version; candidates fell back to v1.
    assert (v1.attempts, v1.failures) == (100, 0)
    assert (v2.attempts, v2.failures) == (candidates, candidates)
    assert set(v2.errors) <= {"NOT_READY", "UNAVAILABLE"} and v2.error_rate == 1.0
    assert sum(v1.histogram) == 100  # every v1 attempt was sent and timed
    assert sum(v2.histogram) == v2.errors.get("UNAVAILABLE", 0)  # skipped ones are not timed
    # Allow-listed and pinned traffic is kept apart from the comparison.
    allow_listed = window.version("digits", "digits", "2", groups=(Group.TARGETED,))
    assert allow_listed.attempts == allow_listed.failures == 3
    assert window.version("digits", "digits", "1", groups=(Group.TARGETED,)).attempts == 3
    assert window.version("digits", "digits", "1", groups=(Group.PINNED,)).attempts == 2
    assert sum(s.attempts for s in window.stats.values()) == 100 + candidates + 6 + 2


def test_redis_down_requests_unaffected_backlog_bounded_drops_counted(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    prefix = f"sig-{uuid.uuid4().hex[:8]}:"
    repo = broken_candidate_repository(tmp_path)
    sidecar = start_sidecar(fresh_redis, prefix, repo, tmp_path / "sidecar.log",
                            "--signals-interval-s", "0.2", "--signals-max-backlog", "2")  # fmt: skip
    try:
        client = triton.InferenceServerClient(sidecar.address)
        infer(client, "user-0")
        fresh_redis.kill()
        answered = 0

        def served_and_dropped() -> bool:
            nonlocal answered
            assert infer(client, f"user-{answered}").model_version == "1"
            answered += 1
            return scrape(sidecar.metrics_url, "trafficsplit_signal_dropped_total") > 0

        # Requests go on over several seconds until the 2-entry backlog overflows.
        wait_until(served_and_dropped, timeout=20, interval=0.01, what="signals dropped")
        assert scrape(sidecar.metrics_url, "trafficsplit_signal_backlog") <= 2
        assert scrape(sidecar.metrics_url, "trafficsplit_signal_flush_failures_total") >= 1
        client.close()
    finally:
        assert sidecar.stop() == 0
    assert answered >= 2
