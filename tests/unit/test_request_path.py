"""The request path's one outcome record, for every way a request can settle.

A scripted in-memory backend (pure unit: no network) and the in-memory RecordingObserver; each
case asserts the immutable RequestOutcome the observers see, and what the caller got.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import digits_flag
from tritonclient.grpc import service_pb2 as kserve

from flags import Subject
from flags.store import FlagStore
from sidecar.backends.base import BackendError, ErrorKind
from sidecar.calls import MessageCall
from sidecar.circuit import CircuitBreaker
from sidecar.errors import NoFlag, Overloaded
from sidecar.fallback import FallbackPolicy
from sidecar.observers import Observers, RecordingObserver, TraceContextPassthrough
from sidecar.outcome import FallbackCause, RequestOutcome, Settlement
from sidecar.plan import Membership, UnflaggedPolicy
from sidecar.readiness import VersionReadiness
from sidecar.routing import Router
from sidecar.tracing import TracingObserver

Behaviour = Callable[[], Any]


class ScriptedBackend:
    """Answers each version as scripted: "ok", an ErrorKind, or ("slow", seconds)."""

    name = "fake"

    def __init__(self, script: dict[str, Any] | None = None) -> None:
        self.script = script or {}
        self.calls: list[tuple[str, tuple[tuple[str, str], ...]]] = []

    async def infer(
        self,
        request: kserve.ModelInferRequest,
        *,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> kserve.ModelInferResponse:
        version = request.model_version
        self.calls.append((version, metadata))
        action = self.script.get(version, "ok")
        if isinstance(action, ErrorKind):
            raise BackendError(action, f"scripted {action}", backend=self.name)
        if isinstance(action, tuple):
            try:
                await asyncio.wait_for(asyncio.sleep(action[1]), timeout)
            except TimeoutError:
                raise BackendError(
                    ErrorKind.DEADLINE_EXCEEDED, "scripted slowness", backend=self.name
                ) from None
        return kserve.ModelInferResponse(model_name=request.model_name, model_version=version)


ALL_ON_CANDIDATE = {"rules": [], "allocation": {"split": {"control": 0, "candidate": 100}}}


def make_router(
    backend: ScriptedBackend,
    flag: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[Router, RecordingObserver]:
    store = FlagStore()
    if flag is not None:
        store.sync({"digits": json.dumps(digits_flag(**flag))}, complete=True)
    recorder = RecordingObserver()
    router = Router(
        store,
        backend,  # type: ignore[arg-type]
        observer=Observers([recorder, TraceContextPassthrough(), *options.pop("observers", [])]),
        **options,
    )
    return router, recorder


def infer(
    router: Router, user: str = "user-1", version: str = "", timeout: float = 5.0, **kw: Any
) -> Any:
    request = kserve.ModelInferRequest(model_name="digits", model_version=version)
    return asyncio.run(
        router.infer(MessageCall(request), Subject(user), timeout=timeout, rpc="ModelInfer", **kw)
    )


def only(recorder: RecordingObserver) -> RequestOutcome:
    assert len(recorder.outcomes) == 1
    return recorder.outcomes[0]


def attempts(outcome: RequestOutcome) -> list[tuple[str, str]]:
    return [(a.version, a.result) for a in outcome.attempts]


def test_served_by_the_cohorts_version() -> None:
    router, recorder = make_router(ScriptedBackend(), ALL_ON_CANDIDATE)
    routed = infer(router)
    outcome = only(recorder)
    assert routed.assignment.served_version == "2"
    assert outcome.settlement is Settlement.SERVED and outcome.status == "OK"
    assert outcome.assignment.membership is Membership.EXPOSED
    assert attempts(outcome) == [("2", "OK")]
    assert outcome.seconds > 0


def test_failing_candidate_falls_back_and_is_blamed() -> None:
    router, recorder = make_router(ScriptedBackend({"2": ErrorKind.UNAVAILABLE}), ALL_ON_CANDIDATE)
    routed = infer(router)
    outcome = only(recorder)
    assert routed.assignment.served_version == "1"
    assert routed.assignment.fallback is FallbackCause.ERROR
    assert outcome.settlement is Settlement.FALLBACK_ERROR and outcome.status == "OK"
    assert attempts(outcome) == [("2", "UNAVAILABLE"), ("1", "OK")]
    # The served parameters are the default variant's, never the candidate's.
    assert dict(routed.assignment.served.parameters) != {"note": "mlp"}


def test_queue_full_candidate_falls_back() -> None:
    backend = ScriptedBackend({"2": ErrorKind.RESOURCE_EXHAUSTED})
    router, recorder = make_router(backend, ALL_ON_CANDIDATE)
    assert infer(router).assignment.served_version == "1"
    assert only(recorder).settlement is Settlement.FALLBACK_ERROR


def test_open_circuit_skips_the_candidate_without_a_call() -> None:
    backend = ScriptedBackend({"2": ErrorKind.INTERNAL})
    router, recorder = make_router(
        backend, ALL_ON_CANDIDATE, breaker=CircuitBreaker(threshold=1, cool_down_s=60)
    )
    infer(router)
    backend.calls.clear()
    routed = infer(router)
    outcome = recorder.outcomes[-1]
    assert routed.assignment.fallback is FallbackCause.CIRCUIT_OPEN
    assert outcome.settlement is Settlement.FALLBACK_CIRCUIT_OPEN
    assert attempts(outcome) == [("2", "CIRCUIT_OPEN"), ("1", "OK")]
    assert [version for version, _ in backend.calls] == ["1"]
    assert not outcome.attempts[0].sent


def test_slow_candidate_gets_a_share_of_the_deadline_then_the_default_answers() -> None:
    backend = ScriptedBackend({"2": ("slow", 10.0)})
    router, recorder = make_router(
        backend, ALL_ON_CANDIDATE, policy=FallbackPolicy(attempt_share=0.5)
    )
    routed = infer(router, timeout=0.4)
    outcome = only(recorder)
    assert routed.assignment.served_version == "1"
    assert outcome.settlement is Settlement.FALLBACK_TIMEOUT and outcome.status == "OK"
    assert attempts(outcome) == [("2", "DEADLINE_EXCEEDED"), ("1", "OK")]
    assert outcome.attempts[0].seconds < 0.35  # its share, not the whole deadline


def test_version_not_ready_is_skipped() -> None:
    readiness = VersionReadiness()

    class Unready:
        name = "fake"

        async def version_states(self, targets: Any) -> dict[Any, str | None]:
            return {(m, v): "not loaded" if v == "2" else None for m, v in targets}

    asyncio.run(readiness.refresh({"": Unready()}, [("", "digits", "1"), ("", "digits", "2")]))  # type: ignore[dict-item]
    backend = ScriptedBackend()
    router, recorder = make_router(backend, ALL_ON_CANDIDATE, readiness=readiness)
    routed = infer(router)
    assert routed.assignment.fallback is FallbackCause.NOT_READY
    assert attempts(only(recorder)) == [("2", "NOT_READY"), ("1", "OK")]
    assert [version for version, _ in backend.calls] == ["1"]


def test_pinned_request_is_its_own_group() -> None:
    router, recorder = make_router(ScriptedBackend(), {"rules": [], "allocation": None})
    routed = infer(router, version="2")
    outcome = only(recorder)
    assert routed.assignment.served_version == "2"
    assert outcome.assignment.membership is Membership.PINNED
    assert outcome.assignment.reason == "PINNED"


def test_user_outside_coverage_is_not_in_the_experiment() -> None:
    flag = {"rules": [], "allocation": {"coverage": 0, "split": {"control": 50, "candidate": 50}}}
    router, recorder = make_router(ScriptedBackend(), flag)
    routed = infer(router)
    outcome = only(recorder)
    assert routed.assignment.variant == "control"
    assert outcome.assignment.membership is Membership.NOT_IN_EXPERIMENT
    assert not outcome.assignment.exposed


def test_no_flag_is_refused_and_recorded() -> None:
    router, recorder = make_router(ScriptedBackend())
    with pytest.raises(NoFlag, match="has no flag"):
        infer(router)
    assert recorder.outcomes == [] and len(recorder.rejected) == 1


def test_no_flag_with_a_stable_pin_serves_that_version() -> None:
    backend = ScriptedBackend()
    router, recorder = make_router(backend, unflagged=UnflaggedPolicy({"digits": "1"}))
    routed = infer(router)
    outcome = only(recorder)
    assert routed.assignment.served_version == "1"
    assert outcome.assignment.membership is Membership.UNFLAGGED
    assert backend.calls[0][0] == "1"


def test_caller_error_from_the_candidate_is_not_a_fallback_and_not_its_fault() -> None:
    backend = ScriptedBackend({"2": ErrorKind.INVALID_ARGUMENT})
    breaker = CircuitBreaker(threshold=1)
    router, recorder = make_router(backend, ALL_ON_CANDIDATE, breaker=breaker)
    for _ in range(3):
        with pytest.raises(BackendError):
            infer(router)
    outcome = recorder.outcomes[-1]
    assert outcome.settlement is Settlement.FAILED and outcome.status == "INVALID_ARGUMENT"
    assert attempts(outcome) == [("2", "INVALID_ARGUMENT")]
    assert not breaker.is_open("digits:2")


def test_cancelled_request_settles_as_cancelled() -> None:
    backend = ScriptedBackend({"2": ("slow", 10.0)})
    router, recorder = make_router(backend, ALL_ON_CANDIDATE)

    async def scenario() -> None:
        request = kserve.ModelInferRequest(model_name="digits")
        task = asyncio.create_task(
            router.infer(MessageCall(request), Subject("u"), timeout=30, rpc="ModelInfer")
        )
        while not backend.calls:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    outcome = only(recorder)
    assert outcome.status == "CANCELLED" and attempts(outcome) == [("2", "CANCELLED")]
    assert router.in_flight == 0


def test_shedding_past_max_in_flight() -> None:
    backend = ScriptedBackend({"2": ("slow", 10.0)})
    router, recorder = make_router(backend, ALL_ON_CANDIDATE, max_in_flight=2)

    async def scenario() -> str:
        def start() -> asyncio.Task[Any]:
            request = kserve.ModelInferRequest(model_name="digits")
            return asyncio.create_task(
                router.infer(MessageCall(request), Subject("u"), timeout=30, rpc="ModelInfer")
            )

        slow = [start(), start()]
        while len(backend.calls) < 2:
            await asyncio.sleep(0)
        try:
            await start()
        except Exception as exc:
            from sidecar.errors import status_for

            return str(status_for(exc)[0].name)
        finally:
            for task in slow:
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
        return "served"

    assert asyncio.run(scenario()) == "RESOURCE_EXHAUSTED"
    assert len(recorder.rejected) == 1


def test_with_tracing_off_the_callers_trace_context_reaches_the_backend() -> None:
    backend = ScriptedBackend()
    router, _ = make_router(backend, ALL_ON_CANDIDATE)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    routed = infer(router, metadata=(("traceparent", parent), ("x-user-id", "u")))
    assert routed.assignment.served_version == "2"
    assert backend.calls == [("2", (("traceparent", parent),))]


def test_fallback_span_tells_the_served_version_and_the_fallback() -> None:
    """The SERVER span gets the outcome's attributes before it ends (they were dropped)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    backend = ScriptedBackend({"2": ErrorKind.UNAVAILABLE})
    store = FlagStore()
    store.sync({"digits": json.dumps(digits_flag(**ALL_ON_CANDIDATE))}, complete=True)
    router = Router(
        store,
        backend,
        observer=TracingObserver(provider.get_tracer("t")),  # type: ignore[arg-type]
    )
    infer(router)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    server = spans["ModelInfer digits"]
    assert server.attributes is not None
    assert server.attributes["ml.model.version"] == "1"
    assert server.attributes["trafficsplit.fallback"] is True
    assert server.attributes["trafficsplit.fallback.cause"] == "error"
    assert server.attributes["trafficsplit.attempted.version"] == "2"
    assert server.attributes["feature_flag.result.variant"] == "candidate"
    clients = [s for s in exporter.get_finished_spans() if s.name.startswith("fake infer")]
    assert [s.attributes["ml.model.version"] for s in clients if s.attributes] == ["2", "1"]
    # Each backend call carried its own CLIENT span's context.
    assert all(dict(md).get("traceparent") for _, md in backend.calls)


def test_a_deadline_shorter_than_the_stable_versions_median_is_refused_early() -> None:
    backend = ScriptedBackend({"1": ("slow", 0.05)})
    all_control = {"rules": [], "allocation": {"split": {"control": 100, "candidate": 0}}}
    router, recorder = make_router(backend, all_control)
    infer(router, timeout=5.0)  # teaches the router v1's median (about 50 ms)
    calls = len(backend.calls)
    with pytest.raises(Overloaded, match="refused early"):
        infer(router, timeout=0.01)
    assert len(backend.calls) == calls  # no backend slot taken by a request that cannot make it
    assert len(recorder.rejected) == 1


ON_BACKEND_B = {
    "rules": [],
    "allocation": {"split": {"control": 0, "candidate": 100}},
    "variants": {
        "control": {"model": "digits", "version": "1"},
        "candidate": {"model": "digits", "version": "2", "backend": "b"},
    },
}


def test_a_variant_on_a_named_backend_is_called_there() -> None:
    default, named = ScriptedBackend(), ScriptedBackend()
    router, recorder = make_router(default, ON_BACKEND_B, named_backends={"b": named})
    routed = infer(router)
    assert routed.assignment.served_version == "2"
    assert [v for v, _ in named.calls] == ["2"] and default.calls == []
    attempt = only(recorder).attempts[0]
    assert (attempt.backend, attempt.version, attempt.result) == ("b", "2", "OK")


def test_a_failing_named_backend_falls_back_to_the_default_backend() -> None:
    default, named = ScriptedBackend(), ScriptedBackend({"2": ErrorKind.UNAVAILABLE})
    breaker = CircuitBreaker(threshold=1, cool_down_s=60)
    router, recorder = make_router(
        default, ON_BACKEND_B, named_backends={"b": named}, breaker=breaker
    )
    assert infer(router).assignment.served_version == "1"
    assert breaker.is_open("b/digits:2") and not breaker.is_open("digits:2")  # per backend
    infer(router)
    assert attempts(recorder.outcomes[-1]) == [("2", "CIRCUIT_OPEN"), ("1", "OK")]


def test_a_target_on_an_unconfigured_backend_falls_back_and_says_so() -> None:
    router, recorder = make_router(ScriptedBackend(), ON_BACKEND_B)
    routed = infer(router)
    assert routed.assignment.served_version == "1"
    assert routed.assignment.fallback is FallbackCause.ERROR
    assert only(recorder).attempts[0].result == "UNAVAILABLE"
