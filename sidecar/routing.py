"""The dispatcher: plan once, call the backend, fall back, settle, and tell the observers.

Transport-agnostic: the KServe-v2 facade and the native API both call :meth:`Router.infer` with a
:class:`~sidecar.calls.BackendCall` and :meth:`Router.assign`. There is one code path, tracing
on or off: tracing, metrics and logging are observers (:mod:`sidecar.observers`) that see the
request planned, each backend attempt begin and end, and one immutable
:class:`~sidecar.outcome.RequestOutcome` when it settles.

Flag evaluation reads the in-memory snapshot only; the one I/O on the request path is the backend
call (twice at most, when the cohort's version fails, is slow, is not loaded or its circuit is
open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flags import Subject
from flags.store import FlagStore
from sidecar.backends.base import BackendError, ErrorKind, InferenceBackend
from sidecar.calls import BackendCall
from sidecar.circuit import CircuitBreaker
from sidecar.errors import Overloaded, RequestError, status_for
from sidecar.fallback import FallbackPolicy, MedianTracker
from sidecar.observers import Exchange, IncomingMetadata, Observer, TraceContextPassthrough
from sidecar.outcome import (
    CANCELLED,
    OK,
    SKIPPED_CIRCUIT_OPEN,
    SKIPPED_NOT_READY,
    Assignment,
    Attempt,
    FallbackCause,
    RequestOutcome,
)
from sidecar.plan import Hop, RoutePlan, UnflaggedPolicy, plan_route
from sidecar.readiness import VersionReadiness
from sidecar.retry_budget import RetryBudget

log = logging.getLogger("sidecar.routing")


@dataclass(frozen=True, slots=True)
class Routed:
    """A backend reply plus what the caller is told about its assignment."""

    response: Any  # kserve.ModelInferResponse, or its bytes for a RawCall
    assignment: Assignment


class Router:
    def __init__(
        self,
        store: FlagStore,
        backend: InferenceBackend,
        *,
        observer: Observer | None = None,
        budget: RetryBudget | None = None,
        breaker: CircuitBreaker | None = None,
        policy: FallbackPolicy | None = None,
        readiness: VersionReadiness | None = None,
        unflagged: UnflaggedPolicy | None = None,
        default_timeout_s: float = 30.0,
        max_in_flight: int = 0,
        named_backends: Mapping[str, InferenceBackend] | None = None,
    ) -> None:
        """``backend`` is the default backend; ``named_backends`` the ones a flag target may
        name (``"backend": "NAME"``)."""
        self._store = store
        self._backend = backend
        # "" is the default backend; each hop's backend is looked up here (one dict lookup).
        self._backends: dict[str, InferenceBackend] = {"": backend, **(named_backends or {})}
        self._labels = {"": backend.name, **{n: n for n in named_backends or {}}}
        self._observer = observer or TraceContextPassthrough()
        self._budget = budget or RetryBudget()
        self._breaker = breaker or CircuitBreaker()
        self._policy = policy or FallbackPolicy()
        self._readiness = readiness or VersionReadiness()
        self._unflagged = unflagged or UnflaggedPolicy()
        self._default_timeout_s = default_timeout_s
        self._max_in_flight = max_in_flight  # 0: unbounded
        self._in_flight = 0
        self._medians = MedianTracker()

    @property
    def backend(self) -> InferenceBackend:
        """The default backend."""
        return self._backend

    @property
    def backends(self) -> Mapping[str, InferenceBackend]:
        """Every backend by name; "" is the default."""
        return self._backends

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def plan(self, model: str, version: str, subject: Subject) -> RoutePlan:
        return plan_route(self._store.snapshot, model, version, subject, self._unflagged)

    def assign(
        self, model: str, subject: Subject, *, rpc: str = "Assign", metadata: IncomingMetadata = ()
    ) -> Assignment:
        exchange = Exchange(rpc, model, subject, metadata, time.perf_counter())
        try:
            plan = self.plan(model, "", subject)
        except RequestError as exc:
            self._observer.on_rejected(exchange, exc)
            raise
        exchange.assignment = Assignment.planned(plan)
        self._observer.on_assign(exchange)
        return exchange.assignment

    async def infer(
        self,
        call: BackendCall,
        subject: Subject,
        *,
        timeout: float | None,
        rpc: str,
        metadata: IncomingMetadata = (),
    ) -> Routed:
        """Route one request (a pinned version in it is honoured when the flag allows)."""
        exchange = Exchange(rpc, call.model_name, subject, metadata, time.perf_counter())
        deadline = time.monotonic() + (timeout if timeout is not None else self._default_timeout_s)
        try:
            if self._max_in_flight and self._in_flight >= self._max_in_flight:
                raise Overloaded(
                    f"{self._in_flight} requests in flight, the limit (--max-in-flight) is "
                    f"{self._max_in_flight}: retry with backoff, or add sidecar capacity"
                )
            plan = self.plan(call.model_name, call.pinned_version, subject)
            self._refuse_if_too_late(plan, deadline)
        except RequestError as exc:
            self._observer.on_rejected(exchange, exc)
            raise
        exchange.assignment = Assignment.planned(plan)
        exchange.call = call
        self._observer.on_request(exchange)
        self._budget.record_request()
        attempts: list[Attempt] = []
        self._in_flight += 1
        try:
            routed = await self._dispatch(call, plan, exchange, deadline, attempts)
        except BaseException as exc:  # cancellation included: every request settles
            self._settle(exchange, exchange.assignment, attempts, exc)
            raise
        finally:
            self._in_flight -= 1
        exchange.response = routed.response
        self._settle(exchange, routed.assignment, attempts, None)
        return routed

    # -- For a path that dispatches by itself (ModelStreamInfer, sidecar.streams): the same
    # admission, policies, labels and settlement as infer(), so its outcome is the same value.

    @property
    def observer(self) -> Observer:
        return self._observer

    @property
    def readiness(self) -> VersionReadiness:
        return self._readiness

    @property
    def policy(self) -> FallbackPolicy:
        return self._policy

    @property
    def default_timeout_s(self) -> float:
        """The deadline of a call that came without one."""
        return self._default_timeout_s

    def admit(self, exchange: Exchange, pinned_version: str) -> RoutePlan:
        """Shed or plan ``exchange`` as :meth:`infer` does, and tell the observers
        (``on_rejected``, or ``on_request`` with ``exchange.assignment`` set)."""
        try:
            if self._max_in_flight and self._in_flight >= self._max_in_flight:
                raise Overloaded(
                    f"{self._in_flight} requests in flight, the limit (--max-in-flight) is "
                    f"{self._max_in_flight}: retry with backoff, or add sidecar capacity"
                )
            plan = self.plan(exchange.model, pinned_version, exchange.subject)
        except RequestError as exc:
            self._observer.on_rejected(exchange, exc)
            raise
        exchange.assignment = Assignment.planned(plan)
        self._observer.on_request(exchange)
        self._budget.record_request()
        return plan

    @contextlib.contextmanager
    def in_flight_slot(self) -> Iterator[None]:
        """Count one admitted request (or stream) in flight while the block runs."""
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    def label(self, hop: Hop) -> str:
        return self._label(hop)

    def may_retry(self, deadline: float) -> bool:
        """Whether a fallback may be sent now (deadline left, retry budget)."""
        return self._may_retry(deadline)

    def settle(
        self,
        exchange: Exchange,
        assignment: Assignment,
        attempts: list[Attempt],
        error: BaseException | None,
        *,
        seconds: float,
    ) -> None:
        """Build the RequestOutcome and tell the observers (``on_settled``)."""
        self._settle(exchange, assignment, attempts, error, seconds=seconds)

    def _refuse_if_too_late(self, plan: RoutePlan, deadline: float) -> None:
        """Refuse now a request whose deadline is shorter than the stable version's median:
        it would very likely time out after taking a backend slot."""
        stable = plan.fallback or plan.primary
        median = self._medians.median(stable.key)
        remaining = deadline - time.monotonic()
        if median is not None and remaining < median:
            raise Overloaded(
                f"refused early: the deadline leaves {remaining * 1000:.1f} ms and version "
                f"{stable.version} of {stable.model!r} takes {median * 1000:.1f} ms at the "
                f"median; send a longer deadline"
            )

    async def _dispatch(
        self,
        call: BackendCall,
        plan: RoutePlan,
        exchange: Exchange,
        deadline: float,
        attempts: list[Attempt],
    ) -> Routed:
        primary, fallback = plan.primary, plan.fallback
        if fallback is None:  # the default, pinned or stable version: nothing to fall back to
            reply, version = await self._attempt(call, exchange, primary, deadline, attempts)
            return Routed(reply, Assignment(plan, primary, version))
        cause: FallbackCause
        if not self._readiness.is_ready(primary.key):
            cause = FallbackCause.NOT_READY
            attempts.append(self._skipped(primary, SKIPPED_NOT_READY))
        elif (permit := self._breaker.permit(primary.key)) is None:
            cause = FallbackCause.CIRCUIT_OPEN
            attempts.append(self._skipped(primary, SKIPPED_CIRCUIT_OPEN))
        else:
            with permit:
                remaining = deadline - time.monotonic()
                attempt_deadline = time.monotonic() + self._policy.attempt_timeout(remaining)
                try:
                    reply, version = await self._attempt(
                        call, exchange, primary, attempt_deadline, attempts
                    )
                except BackendError as exc:
                    found = self._policy.cause_for(exc)
                    if found is None:  # the caller's error says nothing about the version
                        raise
                    permit.failed()
                    cause = found
                    if not self._may_retry(deadline):
                        log.warning(
                            "no fallback for %s (%s): retry budget or deadline exhausted",
                            plan.flag,
                            exc,
                        )
                        raise
                else:
                    permit.succeeded()
                    return Routed(reply, Assignment(plan, primary, version))
        reply, version = await self._attempt(call, exchange, fallback, deadline, attempts)
        return Routed(reply, Assignment(plan, fallback, version, cause))

    def _may_retry(self, deadline: float) -> bool:
        if deadline - time.monotonic() < self._policy.min_fallback_s:
            return False
        return self._budget.try_spend()

    def _skipped(self, hop: Hop, result: str) -> Attempt:
        return Attempt(self._label(hop), hop.model, hop.version, result, 0.0)

    def _label(self, hop: Hop) -> str:
        """The backend as spans and metrics name it: the engine for the default backend
        ("triton", "onnxruntime"), the configured name for a named one."""
        return self._labels.get(hop.backend, hop.backend)

    async def _attempt(
        self,
        call: BackendCall,
        exchange: Exchange,
        hop: Hop,
        deadline: float,
        attempts: list[Attempt],
    ) -> tuple[Any, str]:
        label = self._label(hop)
        backend = self._backends.get(hop.backend)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BackendError(
                ErrorKind.DEADLINE_EXCEEDED, "deadline passed before the call", backend=label
            )
        metadata = self._observer.before_attempt(exchange, hop, label)
        started = time.perf_counter()
        try:
            if backend is None:
                raise BackendError(
                    ErrorKind.UNAVAILABLE,
                    f"the flag routes {hop.model!r} version {hop.version} to backend "
                    f"{hop.backend!r}, which this sidecar does not have (start it with "
                    f"--backend {hop.backend}=HOST:PORT)",
                    backend=label,
                )
            reply = await call.send(backend, hop, remaining, metadata)
        except BackendError as exc:
            self._end_attempt(exchange, attempts, hop, str(exc.kind), started, exc)
            raise
        except asyncio.CancelledError as exc:
            self._end_attempt(exchange, attempts, hop, CANCELLED, started, exc)
            raise
        except Exception as exc:  # a bug in a backend adapter: still one settled attempt
            self._end_attempt(exchange, attempts, hop, str(ErrorKind.INTERNAL), started, exc)
            raise
        seconds = self._end_attempt(exchange, attempts, hop, OK, started, None)
        self._medians.observe(hop.key, seconds)
        return reply, call.served_version(reply, hop)

    def _end_attempt(
        self,
        exchange: Exchange,
        attempts: list[Attempt],
        hop: Hop,
        result: str,
        started: float,
        error: BaseException | None,
    ) -> float:
        seconds = time.perf_counter() - started
        attempt = Attempt(self._label(hop), hop.model, hop.version, result, seconds)
        attempts.append(attempt)
        self._observer.after_attempt(exchange, attempt, error)
        return seconds

    def _settle(
        self,
        exchange: Exchange,
        assignment: Assignment | None,
        attempts: list[Attempt],
        error: BaseException | None,
        *,
        seconds: float | None = None,
    ) -> None:
        assert assignment is not None
        if error is None:
            status, message = "OK", ""
        elif isinstance(error, asyncio.CancelledError):
            status, message = "CANCELLED", "the caller cancelled the request"
        elif isinstance(error, Exception):
            code, message = status_for(error)
            status = str(code.name)
        else:
            status, message = "CANCELLED", type(error).__name__
        outcome = RequestOutcome(
            exchange.rpc,
            assignment,
            tuple(attempts),
            status,
            message,
            time.perf_counter() - exchange.started if seconds is None else seconds,
        )
        self._observer.on_settled(exchange, outcome)
