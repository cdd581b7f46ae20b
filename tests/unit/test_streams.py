"""The stream dispatcher (sidecar.streams) against a scripted in-memory streaming backend.

Each fake stream answers every request it is written by the request's own (retargeted) version,
as scripted: "ok" streams ``RESPONSES`` responses per request; "fail" ends the stream with an
error before any response; "missing" answers with Triton's unknown-version ``error_message``;
"break" sends one response, then ends the stream with an error; "silent" never answers. The
router, breaker, budget, readiness and observers are the real ones.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import pytest
from support import digits_flag
from tritonclient.grpc import service_pb2 as kserve

from flags import Subject
from flags.store import FlagStore
from sidecar import stream_wire, wire
from sidecar.backends.base import BackendError, ErrorKind
from sidecar.backends.triton_stream import stream_error
from sidecar.circuit import CircuitBreaker
from sidecar.errors import InvalidRequest
from sidecar.observers import Observers, RecordingObserver, TraceContextPassthrough
from sidecar.outcome import STREAM_RPC, FallbackCause, RequestOutcome, Settlement
from sidecar.readiness import VersionReadiness
from sidecar.retry_budget import RetryBudget
from sidecar.routing import Router
from sidecar.streams import StreamRoute

RESPONSES = 2
MISSING = "Request for unknown model: 'digits' version 2 is not found"


def request(request_id: str, *, version: str = "", model: str = "digits") -> bytes:
    message = kserve.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    message.inputs.add(name="pixels", datatype="FP32", shape=[1, 1])
    message.raw_input_contents.append(b"\0\0\0\0")
    return bytes(message.SerializeToString())


def response(version: str, request_id: str, index: int) -> bytes:
    infer = kserve.ModelInferResponse(model_name="digits", model_version=version, id=request_id)
    infer.parameters["index"].int64_param = index
    return bytes(kserve.ModelStreamInferResponse(infer_response=infer).SerializeToString())


class FakeStream:
    def __init__(self, script: Mapping[str, str], opened: list[FakeStream]) -> None:
        self._script = script
        self._out: asyncio.Queue[bytes | BackendError | None] = asyncio.Queue()
        self.requests: list[kserve.ModelInferRequest] = []
        self.cancelled = False
        self.hanging = False  # a "silent" request never ends the stream
        opened.append(self)

    async def write(self, raw: bytes) -> None:
        if self.cancelled:
            raise BackendError(ErrorKind.UNAVAILABLE, "cancelled", backend="fake")
        message = kserve.ModelInferRequest.FromString(raw)  # last field wins: the hop's
        self.requests.append(message)
        action = self._script.get(message.model_version, "ok")
        self.hanging |= action == "silent"
        if action == "fail":
            self._out.put_nowait(BackendError(ErrorKind.UNAVAILABLE, "scripted", backend="fake"))
        elif action == "missing":
            error = kserve.ModelStreamInferResponse(error_message=MISSING)
            self._out.put_nowait(bytes(error.SerializeToString()))
        elif action in ("ok", "break"):
            for i in range(1 if action == "break" else RESPONSES):
                self._out.put_nowait(response(message.model_version, message.id, i))
            if action == "break":
                self._out.put_nowait(BackendError(ErrorKind.INTERNAL, "broke", backend="fake"))

    async def done_writing(self) -> None:
        if not self.hanging:
            self._out.put_nowait(None)

    async def read(self) -> bytes | None:
        item = await self._out.get()
        if isinstance(item, BackendError):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled = True

    def error_of(self, message: str) -> BackendError:
        return stream_error(message, url="fake", what="digits")


class StreamingFake:
    """Implements StreamingBackend; only ``open_stream`` and ``version_states`` do anything."""

    name = "fake"

    def __init__(self, script: Mapping[str, str], unready: Iterable[str] = ()) -> None:
        self.script = script
        self.unready = set(unready)
        self.opened: list[FakeStream] = []

    def open_stream(
        self, *, timeout: float | None, metadata: tuple[tuple[str, str], ...] = (), what: str = ""
    ) -> FakeStream:
        return FakeStream(self.script, self.opened)

    async def version_states(
        self, targets: Iterable[tuple[str, str]]
    ) -> Mapping[tuple[str, str], str | None]:
        return {(m, v): ("unloaded" if v in self.unready else None) for m, v in targets}

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def server_ready(self) -> bool:
        return True

    async def model_ready(self, model: str, version: str) -> bool:
        return True

    async def model_metadata(self, model: str, version: str) -> Any: ...
    async def model_config(self, model: str, version: str) -> Any: ...
    async def infer(self, request: Any, **kw: Any) -> Any: ...
    async def infer_raw(self, request: bytes, **kw: Any) -> bytes:
        return b""


def make_router(backend: StreamingFake, **options: Any) -> tuple[Router, RecordingObserver]:
    store = FlagStore()
    flag = digits_flag(rules=[], allocation={"split": {"control": 0, "candidate": 100}})
    store.sync({"digits": json.dumps(flag)}, complete=True)
    recorder = RecordingObserver()
    observer = Observers([recorder, TraceContextPassthrough()])
    router = Router(store, backend, observer=observer, **options)  # type: ignore[arg-type]
    return router, recorder


async def _client(messages: list[bytes]) -> AsyncIterator[bytes]:
    for message in messages:
        yield message


def run_stream(
    router: Router, messages: list[bytes], *, timeout: float | None = 5.0
) -> tuple[list[kserve.ModelStreamInferResponse], BaseException | None]:
    async def scenario() -> tuple[list[bytes], BaseException | None]:
        header = wire.read_request_header(messages[0])
        route = StreamRoute(
            router, messages[0], header, _client(messages[1:]), Subject("u1"), timeout=timeout
        )
        received: list[bytes] = []
        try:
            async for raw in route.responses():
                received.append(raw)
        except Exception as exc:
            return received, exc
        return received, None

    raw, error = asyncio.run(scenario())
    return [kserve.ModelStreamInferResponse.FromString(r) for r in raw], error


def params(r: kserve.ModelStreamInferResponse) -> dict[str, Any]:
    return {
        k: getattr(v, v.WhichOneof("parameter_choice"))
        for k, v in r.infer_response.parameters.items()
    }


def only_outcome(recorder: RecordingObserver) -> RequestOutcome:
    [outcome] = recorder.outcomes
    assert outcome.rpc == STREAM_RPC
    return outcome


def test_every_message_goes_to_the_cohorts_version_and_every_response_says_so() -> None:
    backend = StreamingFake({})
    router, recorder = make_router(backend)
    responses, error = run_stream(router, [request("a"), request("b"), request("c")])
    assert error is None
    assert [(r.infer_response.id, r.infer_response.model_version) for r in responses] == [
        (i, "2") for i in "abc" for _ in range(RESPONSES)
    ]
    assert [params(r)["index"] for r in responses] == [0, 1] * 3  # Triton's own parameters kept
    assert {params(r)["trafficsplit.variant"] for r in responses} == {"candidate"}
    assert {params(r)["trafficsplit.fallback"] for r in responses} == {False}
    [stream] = backend.opened
    assert [
        (m.model_name, m.model_version, m.parameters["note"].string_param) for m in stream.requests
    ] == [("digits", "2", "mlp")] * 3
    outcome = only_outcome(recorder)
    assert outcome.status == "OK" and outcome.settlement is Settlement.SERVED
    assert [(a.version, a.result) for a in outcome.attempts] == [("2", "OK")]
    assert router.in_flight == 0


@pytest.mark.parametrize("failure", ["fail", "missing"])
def test_failure_before_the_first_response_replays_everything_on_the_default(
    failure: str,
) -> None:
    backend = StreamingFake({"2": failure})
    router, recorder = make_router(backend)
    responses, error = run_stream(router, [request("a"), request("b")])
    assert error is None
    assert [(r.infer_response.id, r.infer_response.model_version) for r in responses] == [
        ("a", "1"),
        ("a", "1"),
        ("b", "1"),
        ("b", "1"),
    ]
    assert {params(r)["trafficsplit.fallback_cause"] for r in responses} == {"error"}
    assert {params(r)["trafficsplit.variant"] for r in responses} == {"candidate"}
    candidate, default = backend.opened
    assert candidate.cancelled
    assert [m.id for m in default.requests] == ["a", "b"]  # in the order the client sent them
    assert {m.model_version for m in default.requests} == {"1"}
    assert "note" not in default.requests[0].parameters  # the candidate's parameters stay behind
    outcome = only_outcome(recorder)
    assert outcome.settlement is Settlement.FALLBACK_ERROR
    expected = "UNAVAILABLE" if failure == "fail" else "NOT_FOUND"
    assert [(a.version, a.result) for a in outcome.attempts] == [("2", expected), ("1", "OK")]


def test_a_failure_after_the_first_response_reaches_the_caller() -> None:
    backend = StreamingFake({"2": "break"})
    breaker = CircuitBreaker(threshold=1)
    router, recorder = make_router(backend, breaker=breaker)
    responses, error = run_stream(router, [request("a")])
    assert [r.infer_response.model_version for r in responses] == ["2"]
    assert isinstance(error, BackendError) and error.kind is ErrorKind.INTERNAL
    assert len(backend.opened) == 1  # no fallback once a response was relayed
    outcome = only_outcome(recorder)
    assert outcome.status == "INTERNAL" and outcome.assignment.fallback is None
    assert not breaker.is_open("digits:2")  # its first response succeeded


def test_a_candidate_that_never_answers_falls_back_within_its_share_of_the_deadline() -> None:
    backend = StreamingFake({"2": "silent"})
    router, recorder = make_router(backend)
    responses, error = run_stream(router, [request("a")], timeout=0.2)  # candidate: 0.1 s
    assert error is None
    assert [r.infer_response.model_version for r in responses] == ["1", "1"]
    outcome = only_outcome(recorder)
    assert outcome.assignment.fallback is FallbackCause.TIMEOUT
    assert [a.result for a in outcome.attempts] == ["DEADLINE_EXCEEDED", "OK"]


def test_open_circuit_and_unready_version_skip_the_candidate() -> None:
    backend = StreamingFake({"2": "fail"})
    breaker = CircuitBreaker(threshold=1)
    router, recorder = make_router(backend, breaker=breaker)
    run_stream(router, [request("a")])  # one failure opens the circuit
    assert breaker.is_open("digits:2")
    responses, _ = run_stream(router, [request("b")])
    assert {params(r)["trafficsplit.fallback_cause"] for r in responses} == {"circuit_open"}
    assert [(a.version, a.result) for a in recorder.outcomes[1].attempts] == [
        ("2", "CIRCUIT_OPEN"),
        ("1", "OK"),
    ]
    assert len(backend.opened) == 3  # the skipped candidate was never opened

    readiness = VersionReadiness()
    unready = StreamingFake({}, unready={"2"})
    asyncio.run(readiness.refresh({"": unready}, [("", "digits", "2")]))  # type: ignore[dict-item, list-item]
    router, recorder = make_router(unready, readiness=readiness)
    responses, _ = run_stream(router, [request("c")])
    assert {params(r)["trafficsplit.fallback_cause"] for r in responses} == {"not_ready"}
    assert [m.model_version for s in unready.opened for m in s.requests] == ["1"]


def test_no_retry_budget_passes_the_candidates_failure_to_the_caller() -> None:
    backend = StreamingFake({"2": "fail"})
    router, recorder = make_router(backend, budget=RetryBudget(ratio=0, min_per_s=0))
    responses, error = run_stream(router, [request("a")])
    assert responses == []
    assert isinstance(error, BackendError) and error.kind is ErrorKind.UNAVAILABLE
    assert only_outcome(recorder).status == "UNAVAILABLE"


@pytest.mark.parametrize(
    ("second", "fragment"),
    [
        (b"\x12\x05ab", "message 2 of the stream: malformed ModelInferRequest"),
        (request("b", model="other"), "open one stream per model"),
        (request("b", version="1"), "open one stream per model"),
    ],
)
def test_a_bad_later_message_ends_the_stream_as_the_callers_error(
    second: bytes, fragment: str
) -> None:
    backend = StreamingFake({"2": "silent"})
    router, recorder = make_router(backend)
    _, error = run_stream(router, [request("a"), second])
    assert isinstance(error, InvalidRequest) and fragment in str(error)
    outcome = only_outcome(recorder)
    assert outcome.status == "INVALID_ARGUMENT"
    assert [a.result for a in outcome.attempts] == ["CANCELLED"]  # not the version's fault
    assert backend.opened[0].cancelled


def test_the_caller_hanging_up_settles_the_stream_as_cancelled() -> None:
    backend = StreamingFake({})
    router, recorder = make_router(backend)

    async def scenario() -> None:
        header = wire.read_request_header(request("a"))
        route = StreamRoute(router, request("a"), header, _client([]), Subject("u"), timeout=None)
        responses = route.responses()
        await anext(responses)
        await responses.aclose()  # what grpc does when the client goes away

    asyncio.run(scenario())
    outcome = only_outcome(recorder)
    assert outcome.status == "CANCELLED"
    assert [a.result for a in outcome.attempts] == ["CANCELLED"]
    assert backend.opened[0].cancelled and router.in_flight == 0


def test_stream_wire_appends_the_assignment_inside_the_infer_response_only() -> None:
    backend = StreamingFake({})
    router, _ = make_router(backend)
    responses, _ = run_stream(router, [request("a")])
    assignment_suffix = stream_wire._wrapped(b"")
    assert assignment_suffix == b"\x12\x00"  # field 2, empty: merges into infer_response
    ok = response("2", "a", 0)
    error = bytes(kserve.ModelStreamInferResponse(error_message=MISSING).SerializeToString())
    assert stream_wire.read_stream_response(ok) == ("", True)
    assert stream_wire.read_stream_response(error) == (MISSING, False)
    with pytest.raises(wire.WireError):
        stream_wire.read_stream_response(b"\x0a\x05ab")
    assert params(responses[0])["trafficsplit.flag"] == "digits"
    assert params(responses[0])["index"] == 0  # merged, not replaced


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (MISSING, ErrorKind.NOT_FOUND),
        ("unexpected shape for input 'count' for model 'tokens'", ErrorKind.INVALID_ARGUMENT),
        ("expected 1 inputs but got 0 inputs for model 'tokens'", ErrorKind.INVALID_ARGUMENT),
        ("injected failure before the first response", ErrorKind.INTERNAL),
    ],
)
def test_triton_stream_error_messages_get_a_kind(message: str, kind: ErrorKind) -> None:
    error = stream_error(message, url="127.0.0.1:1", what="model 'tokens'")
    assert error.kind is kind and message in str(error)
