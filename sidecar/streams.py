"""Routing a ``ModelStreamInfer`` stream: one cohort per stream, every message retargeted.

Triton serves decoupled models (LLM token streaming) over a bidirectional stream: the client
writes ``ModelInferRequest`` messages and reads ``ModelStreamInferResponse`` messages, any number
per request. The sidecar routes a stream as one request:

- the cohort is chosen once, from the stream's metadata (``x-user-id``, ``x-attr-*``) and its
  first message's model and version (:func:`sidecar.plan.plan_route`, the same membership and
  fail-safe rules as unary calls); admission (``--max-in-flight``), readiness and the circuit
  breaker's permits apply as for a unary call;
- every message is checked (:func:`sidecar.wire.read_request_header`; one that does not parse,
  or names another model or version than the first, ends the stream with INVALID_ARGUMENT) and
  retargeted by appending the hop's bytes, exactly as a unary request: tensors are never parsed;
- each response that holds an ``infer_response`` gets the assignment parameters appended
  (:mod:`sidecar.stream_wire`); the final assignment is also sent as trailing metadata;
- until the first response was relayed, what the client sent is kept (up to
  :data:`REPLAY_LIMIT_BYTES`). If the cohort's version fails before answering (the stream ends
  with an error, or its first response is an ``error_message`` saying the version is missing or
  failed, or no first response comes within its share of the deadline), its stream is cancelled
  and the kept messages are sent again on a new stream to the default version. Once a response
  reached the client, a failure is the client's to see: it is never hidden or retried;
- the stream settles once, when it ends, through the router's observers (one
  :class:`~sidecar.outcome.RequestOutcome`, one SERVER span, one CLIENT span per backend
  stream). Its latency (the outcome's and each attempt's seconds) is the time to the first
  response: a stream's length depends on what is generated and when the client hangs up, not
  on how fast the version is, and guardrails compare versions by these numbers.

Three tasks cooperate: the caller's handler relays backend responses (:meth:`responses`), a
pump forwards the client's messages, and a reader per backend stream feeds one bounded queue
(so a slow client slows the backend stream down instead of filling memory). Events of a stream
that was replaced are recognised by their generation number and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import NamedTuple

from flags import Subject
from sidecar import stream_wire, wire
from sidecar.backends.base import BackendError, BackendStream, ErrorKind, StreamingBackend
from sidecar.circuit import Permit
from sidecar.errors import InvalidRequest
from sidecar.observers import Exchange, IncomingMetadata
from sidecar.outcome import (
    CANCELLED,
    OK,
    SKIPPED_CIRCUIT_OPEN,
    SKIPPED_NOT_READY,
    STREAM_RPC,
    Assignment,
    Attempt,
    FallbackCause,
)
from sidecar.plan import Hop, RoutePlan
from sidecar.routing import Router
from sidecar.tensors import check_inputs

# What the client sent before the first response is kept for a fallback up to this size; past
# it the stream stays on its version whatever happens (a fallback could not replay it all).
REPLAY_LIMIT_BYTES = 8 * 1024 * 1024
_QUEUE_SIZE = 8  # responses read ahead of the client
_CLIENT = -1  # the generation of the client side's events


class _Event(NamedTuple):
    generation: int  # the backend stream it came from, or _CLIENT
    response: bytes | None  # None: that side ended (or failed: see error)
    error: BaseException | None = None


class StreamRoute:
    """One client stream, routed to its cohort's version (or the default, after a failure)."""

    def __init__(
        self,
        router: Router,
        first: bytes,
        header: wire.RequestHeader,
        requests: AsyncIterator[bytes],
        subject: Subject,
        *,
        timeout: float | None,
        metadata: IncomingMetadata = (),
    ) -> None:
        """``first`` is the stream's first message (already checked: ``header``), ``requests``
        the rest; ``timeout`` the caller's remaining deadline (None: none)."""
        self._router = router
        self._header = header
        self._requests = requests
        self._exchange = Exchange(
            STREAM_RPC, header.model_name, subject, metadata, time.perf_counter()
        )
        self._timeout = timeout
        self._deadline = math.inf if timeout is None else time.monotonic() + timeout
        self._plan: RoutePlan | None = None
        self._hop: Hop | None = None
        self._on_fallback = False
        self._cause: FallbackCause | None = None
        self._permit: Permit | None = None
        self._attempts: list[Attempt] = []
        self._attempt_open = False
        self._attempt_started = 0.0
        self._first_response_deadline = math.inf
        self._generation = 0
        self._stream: BackendStream | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[_Event] = asyncio.Queue(_QUEUE_SIZE)
        self._lock = asyncio.Lock()  # orders writes: the pump's and a fallback's replay
        self._replay: list[tuple[bytes, frozenset[str]]] | None = [(first, header.parameter_keys)]
        self._replay_bytes = len(first)
        self._client_done = False
        self._messages = 1
        self._first_relayed: float | None = None  # perf_counter() of the first relayed response
        self._served_version = ""
        self._suffix = b""

    @property
    def assignment(self) -> Assignment | None:
        """The caller's assignment: planned, then what served (None before planning)."""
        if self._plan is None or self._hop is None:
            return None
        version = self._served_version or self._hop.version
        return Assignment(self._plan, self._hop, version, self._cause)

    @property
    def exchange(self) -> Exchange:
        return self._exchange

    async def responses(self) -> AsyncIterator[bytes]:
        """Relay the stream; raises RequestError / BackendError for the interceptor to map."""
        router = self._router
        self._plan = plan = router.admit(self._exchange, self._header.model_version)
        self._hop = plan.primary
        error: BaseException | None = None
        with router.in_flight_slot(), contextlib.ExitStack() as stack:
            try:
                self._permit = self._first_hop(plan)
                if self._permit is not None:
                    stack.enter_context(self._permit)
                await self._open(self._hop)
                self._pump = asyncio.create_task(self._pump_requests(), name="stream-pump")
                async for response in self._relay():
                    yield response
            except BaseException as exc:  # cancellation included: every stream settles
                error = exc
                raise
            finally:
                self._close(error)
                assignment = self.assignment
                assert assignment is not None
                ended = self._first_relayed or time.perf_counter()
                router.settle(
                    self._exchange,
                    assignment,
                    self._attempts,
                    error,
                    seconds=ended - self._exchange.started,
                )

    def _first_hop(self, plan: RoutePlan) -> Permit | None:
        """Readiness and the breaker, as for unary calls: the permit for the cohort's version,
        or None (the default version serves: no fallback, or the cohort's version is skipped)."""
        if plan.fallback is None:
            return None
        cause: FallbackCause | None = None
        if not self._router.readiness.is_ready(plan.primary.key):
            cause, result = FallbackCause.NOT_READY, SKIPPED_NOT_READY
        elif (permit := self._router.breaker.permit(plan.primary.key)) is None:
            cause, result = FallbackCause.CIRCUIT_OPEN, SKIPPED_CIRCUIT_OPEN
        else:
            return permit
        hop = plan.primary
        self._attempts.append(Attempt(self._router.label(hop), hop.model, hop.version, result, 0))
        self._hop, self._on_fallback, self._cause = plan.fallback, True, cause
        return None

    async def _open(self, hop: Hop) -> None:
        """Start a backend stream for ``hop`` and send it what the client sent so far."""
        router = self._router
        self._generation += 1
        generation = self._generation
        self._hop = hop
        label = router.label(hop)
        metadata = router.observer.before_attempt(self._exchange, hop, label)
        self._attempt_open = True
        self._attempt_started = time.perf_counter()
        remaining = None if self._timeout is None else self._deadline - time.monotonic()
        if self._plan is not None and self._plan.fallback is not None and not self._on_fallback:
            budget = router.policy.attempt_timeout(
                router.default_timeout_s if remaining is None else remaining
            )
            self._first_response_deadline = time.monotonic() + budget
        else:
            self._first_response_deadline = math.inf
        backend = router.backends.get(hop.backend)
        what = f"model {hop.model!r} version {hop.version!r}" if hop.version else repr(hop.model)
        try:
            if not isinstance(backend, StreamingBackend):
                raise BackendError(
                    ErrorKind.UNAVAILABLE,
                    f"backend {label!r} cannot serve ModelStreamInfer for {what}"
                    + ("" if backend else " (no such backend: start it with --backend)"),
                    backend=label,
                )
            if remaining is not None and remaining <= 0:
                raise BackendError(
                    ErrorKind.DEADLINE_EXCEEDED, "deadline passed before the call", backend=label
                )
            stream = backend.open_stream(timeout=remaining, metadata=metadata, what=what)
        except BackendError as exc:
            self._reader = asyncio.create_task(self._events.put(_Event(generation, None, exc)))
            return
        self._reader = asyncio.create_task(self._read(stream, generation), name="stream-reader")
        async with self._lock:
            self._stream = stream
            for raw, keys in self._replay or ():
                await _write(stream, raw + hop.suffix_for(keys))
            if self._client_done:
                await _done_writing(stream)

    async def _read(self, stream: BackendStream, generation: int) -> None:
        try:
            while True:
                response = await stream.read()
                await self._events.put(_Event(generation, response))
                if response is None:
                    return
        except Exception as exc:  # BackendError, or a bug in the adapter: the relay decides
            await self._events.put(_Event(generation, None, exc))

    async def _pump_requests(self) -> None:
        """Forward the client's messages, each checked and retargeted, in order."""
        try:
            async for raw in self._requests:
                self._messages += 1
                keys = self._check(raw)
                async with self._lock:
                    if self._replay is not None:
                        self._replay_bytes += len(raw)
                        self._replay.append((raw, keys))
                    if self._stream is not None and self._hop is not None:
                        await _write(self._stream, raw + self._hop.suffix_for(keys))
            async with self._lock:
                self._client_done = True
                if self._stream is not None:
                    await _done_writing(self._stream)
        except Exception as exc:  # InvalidRequest; the client side failing: the relay ends
            await self._events.put(_Event(_CLIENT, None, exc))

    def _check(self, raw: bytes) -> frozenset[str]:
        n = self._messages
        try:
            header = wire.read_request_header(raw)
        except wire.WireError as exc:
            raise InvalidRequest(f"message {n} of the stream: {exc}") from exc
        first = self._header
        if header.model_name != first.model_name or header.model_version != first.model_version:
            raise InvalidRequest(
                f"message {n} of the stream asks for model {header.model_name!r} version "
                f"{header.model_version!r}, the first for {first.model_name!r} version "
                f"{first.model_version!r}: a stream is routed to one model once; open one "
                f"stream per model"
            )
        check_inputs(header.inputs, header.raw_input_sizes)
        return header.parameter_keys

    async def _next_event(self) -> _Event:
        if self._replay is None or self._first_response_deadline == math.inf:
            return await self._events.get()
        budget = self._first_response_deadline - time.monotonic()
        try:
            return await asyncio.wait_for(self._events.get(), max(0.0, budget))
        except TimeoutError:
            hop = self._hop
            assert hop is not None
            return _Event(
                self._generation,
                None,
                BackendError(
                    ErrorKind.DEADLINE_EXCEEDED,
                    f"version {hop.version} of {hop.model!r} sent no first response within its "
                    f"share of the deadline",
                    backend=self._router.label(hop),
                ),
            )

    async def _relay(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._next_event()
            if event.generation not in (_CLIENT, self._generation):
                continue  # from a stream a fallback replaced
            if event.error is not None:
                if event.generation == _CLIENT:
                    raise event.error
                await self._failed(event.error)  # falls back, or raises
                continue
            if event.response is None:  # the backend ended the stream: all answered
                self._end_attempt(OK, None)
                return
            raw = event.response
            try:
                head = stream_wire.read_stream_response(raw)
            except wire.WireError as exc:
                hop = self._hop
                assert hop is not None
                error = BackendError(ErrorKind.INTERNAL, str(exc), backend=self._router.label(hop))
                await self._failed(error)
                continue
            if self._replay is not None:
                if head.error_message and await self._fell_back(head.error_message):
                    continue
                self._commit(raw, head)
            yield raw + self._suffix if head.has_infer_response else raw

    async def _fell_back(self, message: str) -> bool:
        """A first response that is an error: fall back if it says the version failed."""
        assert self._stream is not None
        error = self._stream.error_of(message)
        cause = self._fallback_cause(error)
        if cause is None or not self._router.may_retry(self._deadline):
            return False  # relayed to the client as it is
        await self._fall_back(error, cause)
        return True

    def _commit(self, raw: bytes, head: stream_wire.StreamResponse) -> None:
        """The first response reaches the client: no fallback from here on."""
        self._replay = None
        self._first_relayed = time.perf_counter()
        if self._permit is not None and not self._on_fallback and not head.error_message:
            self._permit.succeeded()
        hop = self._hop
        assert hop is not None
        if not hop.version and head.has_infer_response:  # the backend chose (passthrough)
            self._served_version = stream_wire.served_version(raw)
        assignment = self.assignment
        assert assignment is not None
        self._suffix = stream_wire.response_suffix(assignment)

    def _fallback_cause(self, error: BaseException) -> FallbackCause | None:
        """Why ``error`` sends the stream to the default version, or None when it goes to
        the client. Strikes the cohort's version in the breaker as a unary failure would."""
        if self._on_fallback or self._plan is None or self._plan.fallback is None:
            return None
        if self._replay is None or not isinstance(error, BackendError):
            return None
        cause = self._router.policy.cause_for(error)
        if cause is not None and self._permit is not None:
            self._permit.failed()
        if self._replay_bytes > REPLAY_LIMIT_BYTES:
            return None
        return cause

    async def _failed(self, error: BaseException) -> None:
        cause = self._fallback_cause(error)
        if cause is None or not self._router.may_retry(self._deadline):
            raise error
        await self._fall_back(error, cause)

    async def _fall_back(self, error: BaseException, cause: FallbackCause) -> None:
        assert self._plan is not None and self._plan.fallback is not None
        self._end_attempt(_result_of(error), error)
        self._on_fallback, self._cause = True, cause
        await self._open(self._plan.fallback)

    def _end_attempt(self, result: str, error: BaseException | None) -> None:
        stream, self._stream = self._stream, None
        reader, self._reader = self._reader, None
        if stream is not None:
            stream.cancel()  # makes a write in progress return: the lock is released
        if reader is not None:
            reader.cancel()
        if not self._attempt_open:
            return
        self._attempt_open = False
        hop = self._hop
        assert hop is not None
        ended = self._first_relayed or time.perf_counter()
        attempt = Attempt(
            self._router.label(hop),
            hop.model,
            hop.version,
            result,
            max(0.0, ended - self._attempt_started),
        )
        self._attempts.append(attempt)
        self._router.observer.after_attempt(self._exchange, attempt, error)

    def _close(self, error: BaseException | None) -> None:
        """Synchronous (it runs when the caller hangs up, too): stop every task and stream."""
        if self._pump is not None:
            self._pump.cancel()
        if self._attempt_open or self._stream is not None:
            result = OK if error is None else _result_of(error)
            self._end_attempt(result, error)


def _result_of(error: BaseException) -> str:
    if isinstance(error, BackendError):
        return str(error.kind)
    if isinstance(error, InvalidRequest):
        return CANCELLED  # abandoned for the caller's fault: says nothing about the version
    if not isinstance(error, Exception):  # cancelled, or the caller hung up
        return CANCELLED
    return str(ErrorKind.INTERNAL)


async def _write(stream: BackendStream, request: bytes) -> None:
    with contextlib.suppress(BackendError):  # the stream ended: its reader reports how
        await stream.write(request)


async def _done_writing(stream: BackendStream) -> None:
    with contextlib.suppress(BackendError):
        await stream.done_writing()
