"""The in-process client on the embedded onnxruntime engine and the bundled demo flag (no
servers), and the unhappy paths of its lifecycle: not started, closed, Redis unreachable."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from support import ROOT

from inproc import InProcessClient, InProcessError, InvalidInput, RoutingError

PIXELS = np.load(ROOT / "triton_models" / "digits" / "golden.npz")["pixels"].astype(np.float32)
LABELS = np.load(ROOT / "triton_models" / "digits" / "golden.npz")["labels"]


def test_the_embedded_engine_serves_the_cohorts_version() -> None:
    async def scenario() -> None:
        async with InProcessClient.from_settings() as client:  # bundled flag, embedded engine
            seen = {}
            for i in range(40):
                r = await client.infer("digits", {"pixels": PIXELS[i : i + 1]}, user_id=f"u{i}")
                assert r.model_version == {"control": "1", "candidate": "2"}[r.variant]
                assert r.outputs["probabilities"].shape == (1, 10)
                assert r.as_numpy("label") is r.outputs["label"] and r.as_numpy("nope") is None
                seen[r.variant] = seen.get(r.variant, 0) + int(
                    r.outputs["label"][0][0] == LABELS[i]
                )
            assert set(seen) == {"control", "candidate"}
            tensor = triton.InferInput("pixels", [1, 64], "FP32")
            tensor.set_data_from_numpy(PIXELS[:1])
            pinned = await client.infer("digits", [tensor], user_id="u1", version="2")
            assert (pinned.model_version, str(pinned.assignment.membership)) == ("2", "pinned")
            allowed = client.assign("digits", user_id="alice@example.com")
            assert (allowed.variant, allowed.reason) == ("candidate", "TARGETING_MATCH")
            enterprise = client.assign(
                "digits", user_id="x", attributes={"tier": "enterprise", "tenure_days": 31}
            )
            assert enterprise.variant == "candidate"  # 31 arrives as "31", as on the sidecar

    asyncio.run(scenario())


def test_bad_requests_are_clear_errors_and_never_reach_the_engine() -> None:
    async def scenario() -> None:
        async with InProcessClient.from_settings() as client:
            cases = [
                ({"pixels": np.zeros((1, 3), np.float32)}, {}, InvalidInput, "expects [-1, 64]"),
                ({"pixels": PIXELS[:1]}, {"user_id": ""}, InvalidInput, "no user id"),
                ({"pixels": PIXELS[:1]}, {"user_id": "u" * 300}, InvalidInput, "limit is 256"),
                ({"pixels": PIXELS[:1]}, {"attributes": {"a": [1]}}, InvalidInput, "is a list"),
            ]
            for inputs, extra, kind, text in cases:
                kwargs = {"user_id": "u1", **extra}
                with pytest.raises(kind) as caught:
                    await client.infer("digits", inputs, **kwargs)  # type: ignore[arg-type]
                assert text in caught.value.message
            with pytest.raises(RoutingError) as refused:
                await client.infer("unknown-model", {"pixels": PIXELS[:1]}, user_id="u1")
            assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
            assert "has no flag" in refused.value.message
            with pytest.raises(RoutingError, match="has no flag"):
                client.assign("unknown-model", user_id="u1")

    asyncio.run(scenario())


def test_a_client_not_started_or_closed_says_so() -> None:
    async def scenario() -> None:
        client = InProcessClient.from_settings()
        with pytest.raises(InProcessError, match="not started") as caught:
            await client.infer("digits", {"pixels": PIXELS[:1]}, user_id="u1")
        assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
        async with client:
            await client.infer("digits", {"pixels": PIXELS[:1]}, user_id="u1")
        with pytest.raises(InProcessError, match="not started"):
            await client.infer("digits", {"pixels": PIXELS[:1]}, user_id="u1")
        await client.close()  # twice is fine

    asyncio.run(scenario())


def test_redis_unreachable_at_start_fails_safe_with_a_clear_error() -> None:
    async def scenario() -> None:
        started = time.monotonic()
        async with InProcessClient.from_settings(
            redis_url="redis://127.0.0.1:1/0", signals_interval_s=0, events="off"
        ) as client:
            assert time.monotonic() - started < 10  # bounded: it does not hang the app
            assert client.store.health.stale
            with pytest.raises(RoutingError) as caught:
                await client.infer("digits", {"pixels": PIXELS[:1]}, user_id="u1")
            assert "has no flag" in caught.value.message

    asyncio.run(scenario())
