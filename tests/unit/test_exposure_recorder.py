"""Exposure recording on the request path: who counts, once, with bounded memory; and the
buffered sink's bound and retry (pure: an in-memory backend and sinks, an injected clock)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

from support import digits_flag
from support_events import EXPERIMENT, experiment_flag
from tritonclient.grpc import service_pb2 as kserve

from experiments.events.model import Event, Exposure
from experiments.events.sinks import BufferedSink, MemorySink
from flags import Subject
from flags.store import FlagStore
from sidecar.backends.base import BackendError, ErrorKind
from sidecar.calls import MessageCall
from sidecar.exposures import ExposureRecorder
from sidecar.routing import Router


class Backend:
    name = "memory"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def infer(self, request: kserve.ModelInferRequest, **_: Any) -> Any:
        if self.fail:
            raise BackendError(ErrorKind.INVALID_ARGUMENT, "bad tensor", backend=self.name)
        return kserve.ModelInferResponse(model_version=request.model_version)


def setup(doc: dict[str, Any], *, capacity: int = 100, fail: bool = False) -> tuple[Router, MemorySink, ExposureRecorder]:  # fmt: skip
    store = FlagStore()
    store.sync({doc["key"]: json.dumps(doc)}, complete=True)
    sink = MemorySink()
    recorder = ExposureRecorder(store, sink, capacity=capacity, clock_ms=lambda: 1234)
    router = Router(store, Backend(fail), observer=recorder)  # type: ignore[arg-type]
    return router, sink, recorder


def serve(router: Router, user: str, *, attributes: dict[str, str] | None = None, version: str = "") -> None:  # fmt: skip
    request = kserve.ModelInferRequest(model_name="digits", model_version=version)
    call = router.infer(
        MessageCall(request), Subject(user, attributes or {}), timeout=5, rpc="ModelInfer"
    )
    with contextlib.suppress(BackendError):  # a failed request is a case too
        asyncio.run(call)


def test_an_exposed_user_is_recorded_once_with_segments_and_served_version() -> None:
    router, sink, recorder = setup(experiment_flag(candidate=100))
    for _ in range(3):
        serve(router, "u1", attributes={"tier": "pro", "country": "fr"})
    assert sink.events == [
        Exposure("digits", "digits", "u1", "candidate", "2", 1234, (("tier", "pro"),),
                 "candidate=100")
    ]  # fmt: skip
    assert (recorder.recorded, recorder.suppressed) == (1, 2)


def test_only_exposed_and_served_requests_of_experiment_flags_count() -> None:
    targeted = experiment_flag(rules=[{"users": ["vip"], "serve": "candidate"}])
    router, sink, _ = setup(targeted)
    serve(router, "vip")  # an allow-list: targeted, not exposed
    serve(router, "someone", version="1")  # pinned
    assert sink.events == []
    router, sink, _ = setup(experiment_flag(allocation={"coverage": 0, "split": {"control": 100}}))
    serve(router, "outside")  # outside coverage
    assert sink.events == []
    router, sink, _ = setup(digits_flag(rules=[], experiment=None))  # no experiment: nothing
    serve(router, "u1")
    assert sink.events == []
    router, sink, _ = setup(experiment_flag(), fail=True)
    serve(router, "u1")  # failed: never served
    assert sink.events == []


def test_a_named_experiment_and_a_salt_change_the_experiment_id() -> None:
    router, sink, _ = setup(experiment_flag(salt="s2"))
    serve(router, "u1")
    router2, sink2, _ = setup(experiment_flag(experiment={**EXPERIMENT, "id": "q3"}))
    serve(router2, "u1")
    assert [e.experiment for e in (*sink.events, *sink2.events)] == ["digits@s2", "q3"]  # type: ignore[union-attr]


def test_dedupe_memory_is_bounded_by_two_generations() -> None:
    router, sink, recorder = setup(experiment_flag(), capacity=10)
    users = [f"u{i}" for i in range(25)]
    for user in users:
        serve(router, user)
    assert len(sink.events) == 25
    assert len(recorder._current) + len(recorder._previous) <= 20
    serve(router, "u24")  # recent: still remembered
    assert len(sink.events) == 25
    serve(router, "u0")  # forgotten after two generations: recorded again (ingestion dedupes)
    assert len(sink.events) == 26


class FlakySink(BufferedSink):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.up = False
        self.stored: list[Event] = []

    async def _write(self, batch: Sequence[Event]) -> None:
        if not self.up:
            raise ConnectionError("destination away")
        self.stored.extend(batch)


def test_a_failed_flush_keeps_the_batch_and_a_full_buffer_counts_drops() -> None:
    sink = FlakySink(max_buffer=3)
    events = [Exposure("e", "f", f"u{i}", "control", "1", i) for i in range(5)]
    for event in events:
        sink.record(event)
    assert (len(sink.buffer), sink.dropped) == (3, 2)
    assert asyncio.run(sink.flush()) is False
    assert (len(sink.buffer), sink.failed_flushes, sink.stored) == (3, 1, [])
    sink.up = True
    assert asyncio.run(sink.flush()) is True
    assert (sink.stored, len(sink.buffer), sink.written) == (events[:3], 0, 3)


def test_each_exposure_carries_the_split_that_chose_it() -> None:
    beta = {"name": "beta", "when": {"attribute": "tier", "op": "eq", "value": "beta"},
            "split": {"control": 10, "candidate": 90}}  # fmt: skip
    router, sink, _ = setup(experiment_flag(candidate=20, rules=[beta]))
    serve(router, "u1", attributes={"tier": "beta"})
    serve(router, "u2", attributes={"tier": "pro"})
    assert [e.split for e in sink.events] == [  # type: ignore[union-attr]
        "control=10,candidate=90",
        "control=80,candidate=20",
    ]
