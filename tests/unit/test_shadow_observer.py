"""ShadowObserver on the real Router with an in-memory backend (pure unit: no network).

The backend answers each version with a fixed label, and can hold the shadow version's calls
until released, so concurrency, drops and ordering are asserted exactly, without sleeps.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support import digits_flag
from tritonclient.grpc import service_pb2 as kserve

from flags import Subject
from flags.store import FlagStore
from sidecar.backends.base import BackendError, ErrorKind
from sidecar.calls import MessageCall
from sidecar.circuit import CircuitBreaker
from sidecar.observers import Observers, RecordingObserver
from sidecar.routing import Router
from sidecar.shadow import ShadowMetrics, ShadowObserver

CONTROL_ONLY = {"rules": [], "allocation": {"split": {"control": 100, "candidate": 0}}}


class LabelBackend:
    """Version v answers label ``labels[v]``; the gated version waits for ``release``."""

    name = "fake"

    def __init__(self, labels: dict[str, int], *, fail: dict[str, ErrorKind] | None = None) -> None:
        self.labels = labels
        self.fail = fail or {}
        self.gated: str | None = None
        self.release = asyncio.Event()
        self.calls: list[str] = []

    async def infer(
        self, request: kserve.ModelInferRequest, *, timeout: float | None, metadata: Any = ()
    ) -> kserve.ModelInferResponse:
        version = request.model_version
        self.calls.append(version)
        if version in self.fail:
            raise BackendError(self.fail[version], "scripted failure", backend=self.name)
        if version == self.gated:
            await self.release.wait()
        reply = kserve.ModelInferResponse(model_name=request.model_name, model_version=version)
        label = np.array([[self.labels[version]]], np.int64)
        reply.outputs.add(name="label", datatype="INT64", shape=[1, 1])
        reply.raw_output_contents.append(label.tobytes())
        return reply


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[Any, ...]] = []

    def record(self, *args: Any, **kwargs: Any) -> None:
        self.records.append(args)


def setup(
    backend: LabelBackend, shadow: dict[str, Any], **flag: Any
) -> tuple[Router, ShadowObserver, RecordingObserver, Recorder]:
    store = FlagStore()
    doc = digits_flag(**{**CONTROL_ONLY, **flag})
    doc["shadow"] = shadow
    store.sync({"digits": json.dumps(doc)}, complete=True)
    recorder = Recorder()
    observer = ShadowObserver(
        store,
        backend,  # type: ignore[arg-type]
        ShadowMetrics(CollectorRegistry()),
        recorder=recorder,
        rng=random.Random(7),
    )
    outcomes = RecordingObserver()
    router = Router(
        store,
        backend,  # type: ignore[arg-type]
        observer=Observers([outcomes, observer]),
        breaker=CircuitBreaker(threshold=2),
    )
    return router, observer, outcomes, recorder


async def send(router: Router, user: str, version: str = "") -> Any:
    request = kserve.ModelInferRequest(model_name="digits", model_version=version)
    return await router.infer(MessageCall(request), Subject(user), timeout=5, rpc="ModelInfer")


def value(observer: ShadowObserver, name: str, **labels: str) -> float:
    return observer.metrics.registry.get_sample_value(name, labels) or 0.0


def test_every_request_is_mirrored_after_it_is_answered_and_compared() -> None:
    backend = LabelBackend({"1": 3, "2": 3})

    async def run() -> tuple[list[str], list[str]]:
        router, observer, _, _ = setup(backend, {"variant": "candidate", "percent": 100})
        await send(router, "u1")
        at_reply = list(backend.calls)  # the shadow call has not started when the caller has
        assert await observer.drain(5)
        return at_reply, list(backend.calls)

    at_reply, after = asyncio.run(run())
    assert at_reply == ["1"]
    assert after == ["1", "2"]


def test_agreement_is_counted_and_recorded_per_version() -> None:
    backend = LabelBackend({"1": 3, "2": 4})

    async def run() -> tuple[ShadowObserver, Recorder]:
        router, observer, _, recorder = setup(backend, {"variant": "candidate", "percent": 100})
        for i in range(3):
            await send(router, f"u{i}")
        assert await observer.drain(5)
        backend.labels["2"] = 3
        await send(router, "u9")
        assert await observer.drain(5)
        return observer, recorder

    observer, recorder = asyncio.run(run())
    labels = {"flag": "digits", "served_version": "1", "shadow_version": "2"}
    assert (
        value(observer, "trafficsplit_shadow_comparisons_total", **labels, verdict="disagree") == 3
    )
    assert value(observer, "trafficsplit_shadow_comparisons_total", **labels, verdict="agree") == 1
    assert value(observer, "trafficsplit_shadow_requests_total", flag="digits", model="digits",
                 version="2") == 4  # fmt: skip
    assert [r[5] for r in recorder.records] == ["DISAGREE"] * 3 + ["AGREE"]
    assert {r[:5] for r in recorder.records} == {("digits", "shadow", "fake", "digits", "2")}


def test_concurrency_of_one_drops_the_rest_of_a_burst_and_counts_them() -> None:
    backend = LabelBackend({"1": 3, "2": 3})
    backend.gated = "2"

    async def run() -> ShadowObserver:
        router, observer, _, _ = setup(
            backend, {"variant": "candidate", "percent": 100, "max_concurrency": 1}
        )
        replies = await asyncio.gather(*(send(router, f"u{i}") for i in range(10)))
        assert [r.assignment.served_version for r in replies] == ["1"] * 10  # all answered
        await asyncio.sleep(0)  # let the one admitted shadow task start (and block)
        assert observer.in_flight("digits") == 1
        backend.release.set()
        assert await observer.drain(5)
        assert observer.in_flight("digits") == 0
        return observer

    observer = asyncio.run(run())
    assert value(observer, "trafficsplit_shadow_dropped_total", flag="digits") == 9
    assert value(observer, "trafficsplit_shadow_requests_total", flag="digits", model="digits",
                 version="2") == 1  # fmt: skip
    assert backend.calls.count("2") == 1


def test_shadow_errors_never_trip_the_breaker_or_touch_the_callers_answer() -> None:
    backend = LabelBackend({"1": 3}, fail={"2": ErrorKind.UNAVAILABLE})

    async def run() -> tuple[Router, ShadowObserver, RecordingObserver, Recorder]:
        router, observer, outcomes, recorder = setup(
            backend, {"variant": "candidate", "percent": 100}
        )
        for i in range(20):
            routed = await send(router, f"u{i}")
            assert routed.assignment.fallback is None
            await observer.drain(5)
        return router, observer, outcomes, recorder

    router, observer, outcomes, recorder = asyncio.run(run())
    assert [o.status for o in outcomes.outcomes] == ["OK"] * 20
    assert all(len(o.attempts) == 1 and o.attempts[0].version == "1" for o in outcomes.outcomes)
    assert router.breaker.states() == {}  # threshold 2: twenty shadow failures opened nothing
    assert value(observer, "trafficsplit_shadow_errors_total", flag="digits", model="digits",
                 version="2", kind="UNAVAILABLE") == 20  # fmt: skip
    assert [r[5] for r in recorder.records] == ["UNAVAILABLE"] * 20


def test_skips_failed_pinned_and_served_by_the_shadow_version() -> None:
    backend = LabelBackend({"1": 3, "2": 3}, fail={})

    async def run() -> ShadowObserver:
        router, observer, _, _ = setup(backend, {"variant": "candidate", "percent": 100})
        await send(router, "u1", version="1")  # pinned
        backend.fail["1"] = ErrorKind.INVALID_ARGUMENT
        with pytest.raises(BackendError):
            await send(router, "u2")
        assert await observer.drain(5)
        return observer

    observer = asyncio.run(run())
    assert value(observer, "trafficsplit_shadow_skipped_total", flag="digits", reason="pinned") == 1
    assert value(observer, "trafficsplit_shadow_skipped_total", flag="digits", reason="failed") == 1

    served_by_shadow = LabelBackend({"1": 3, "2": 3})

    async def run_candidate() -> ShadowObserver:
        router, observer, _, _ = setup(
            served_by_shadow,
            {"variant": "candidate", "percent": 100},
            allocation={"split": {"control": 0, "candidate": 100}},
        )
        await send(router, "u1")
        assert await observer.drain(5)
        return observer

    observer = asyncio.run(run_candidate())
    assert served_by_shadow.calls == ["2"]
    assert value(observer, "trafficsplit_shadow_skipped_total", flag="digits",
                 reason="served_is_shadow") == 1  # fmt: skip


def test_percent_samples_that_share_of_requests() -> None:
    backend = LabelBackend({"1": 3, "2": 3})

    async def run() -> int:
        router, observer, _, _ = setup(backend, {"variant": "candidate", "percent": 25})
        for i in range(400):
            await send(router, f"u{i}")
            await observer.drain(5)
        return backend.calls.count("2")

    mirrored = asyncio.run(run())
    # One draw per eligible request from the injected random.Random(7): replay them.
    draws = random.Random(7)
    assert mirrored == sum(1 for _ in range(400) if draws.random() * 100 < 25)
    assert 70 <= mirrored <= 130  # binomial(400, 0.25): sd 8.7, a ±3.5 sd band


def test_flags_without_shadow_are_untouched() -> None:
    backend = LabelBackend({"1": 3, "2": 3})

    async def run() -> None:
        router, observer, _, _ = setup(backend, {"variant": "candidate", "percent": 0})
        await send(router, "u1")
        assert await observer.drain(5)

    asyncio.run(run())
    assert backend.calls == ["1"]
