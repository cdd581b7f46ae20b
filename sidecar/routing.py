"""The data plane: plan a route from the flags, call the backend, fall back, trace it all.

Transport-agnostic: the KServe-v2 facade and the native API both call :meth:`Router.infer` with a
:class:`BackendCall` (a parsed request, or the raw bytes a Triton client sent) and
:meth:`Router.assign`. Flag evaluation reads the in-memory snapshot only; the one I/O on the
request path is the backend call (twice at most, when the cohort's version fails).

Spans are started with their attributes in one go and parented explicitly, without attaching
contexts: on this path every microsecond is latency the app pays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from tritonclient.grpc import service_pb2 as kserve

from flags import Subject
from flags.schema import Scalar
from flags.store import FlagStore
from sidecar import telemetry as tm
from sidecar import wire
from sidecar.backends.base import BackendError, ErrorKind, InferenceBackend, RawInferenceBackend
from sidecar.circuit import CircuitBreaker
from sidecar.errors import RequestError, status_for
from sidecar.metrics import SidecarMetrics
from sidecar.plan import Hop, RoutePlan, plan_route
from sidecar.retry_budget import RetryBudget

log = logging.getLogger("sidecar.routing")

MIN_RETRY_BUDGET_S = 0.005  # do not start a fallback with less deadline than this left
Metadata = tuple[tuple[str, str], ...]


class BackendCall(Protocol):
    """One inference request as the router sends it, once per hop (twice after a failure)."""

    @property
    def model_name(self) -> str: ...

    @property
    def pinned_version(self) -> str: ...

    async def send(self, backend: Any, hop: Hop, timeout: float, metadata: Metadata) -> Any: ...

    def served_version(self, reply: Any, hop: Hop) -> str: ...


class MessageCall:
    """A parsed ModelInferRequest (native API; embedded engine)."""

    __slots__ = ("_caller_set", "request")

    def __init__(self, request: kserve.ModelInferRequest) -> None:
        self.request = request
        self._caller_set = frozenset(request.parameters)

    @property
    def model_name(self) -> str:
        return str(self.request.model_name)

    @property
    def pinned_version(self) -> str:
        return str(self.request.model_version)

    async def send(
        self, backend: InferenceBackend, hop: Hop, timeout: float, metadata: Metadata
    ) -> Any:
        request = self.request
        request.model_name = hop.model
        request.model_version = hop.version
        _apply_parameters(request, hop.parameters, self._caller_set)
        return await backend.infer(request, timeout=timeout, metadata=metadata)

    def served_version(self, reply: kserve.ModelInferResponse, hop: Hop) -> str:
        return str(reply.model_version) or hop.version


class RawCall:
    """The serialized request as the client sent it, forwarded with the target appended."""

    __slots__ = ("header", "raw")

    def __init__(self, raw: bytes, header: wire.RequestHeader) -> None:
        self.raw = raw
        self.header = header

    @property
    def model_name(self) -> str:
        return self.header.model_name

    @property
    def pinned_version(self) -> str:
        return self.header.model_version

    async def send(
        self, backend: RawInferenceBackend, hop: Hop, timeout: float, metadata: Metadata
    ) -> bytes:
        payload = self.raw + wire.retarget(
            hop.model, hop.version, hop.parameters, self.header.parameter_keys
        )
        what = (
            f"model {hop.model!r} version {hop.version!r}"
            if hop.version
            else f"model {hop.model!r}"
        )
        return await backend.infer_raw(payload, timeout=timeout, metadata=metadata, what=what)

    def served_version(self, reply: bytes, hop: Hop) -> str:
        return wire.read_response_version(reply) or hop.version


@dataclass(frozen=True, slots=True)
class Routed:
    """A backend reply plus what the caller is told about its assignment."""

    response: Any  # kserve.ModelInferResponse, or its bytes for a RawCall
    plan: RoutePlan
    served: Hop
    served_version: str
    fallback: bool


class Router:
    def __init__(
        self,
        store: FlagStore,
        backend: InferenceBackend,
        tracer: Tracer,
        *,
        budget: RetryBudget | None = None,
        breaker: CircuitBreaker | None = None,
        metrics: SidecarMetrics | None = None,
        default_timeout_s: float = 30.0,
        trace_user_id: bool = False,
        tracing: bool = True,
    ) -> None:
        self._store = store
        self._backend = backend
        self._tracer = tracer
        self._budget = budget or RetryBudget()
        self._breaker = breaker or CircuitBreaker()
        self._metrics = metrics or SidecarMetrics()
        self._default_timeout_s = default_timeout_s
        self._trace_user_id = trace_user_id
        self._backend_name = backend.name
        # No exporter: no spans at all (the caller's trace context is passed through as it came).
        self._tracing = tracing
        self.fallbacks = 0

    @property
    def backend(self) -> InferenceBackend:
        return self._backend

    def plan(self, model: str, version: str, subject: Subject) -> RoutePlan:
        return plan_route(self._store.snapshot, model, version, subject)

    def assign(
        self,
        model: str,
        subject: Subject,
        *,
        rpc: str = "Assign",
        metadata: Iterable[tuple[str, str | bytes]] = (),
    ) -> RoutePlan:
        plan = self.plan(model, "", subject)
        if self._tracing:
            span = self._tracer.start_span(
                f"{rpc} {model}",
                context=tm.extract_context(metadata),
                kind=SpanKind.SERVER,
                attributes=self._attributes(plan, subject),
            )
            span.end()
        return plan

    async def infer(
        self,
        call: BackendCall,
        subject: Subject,
        *,
        timeout: float | None,
        rpc: str,
        metadata: Iterable[tuple[str, str | bytes]] = (),
    ) -> Routed:
        """Route one request (a pinned version in it is honoured when the flag allows)."""
        started = time.perf_counter()
        deadline = time.monotonic() + (timeout if timeout is not None else self._default_timeout_s)
        if not self._tracing:
            return await self._untraced(
                call, subject, deadline, started, tm.passthrough_metadata(metadata)
            )
        model = call.model_name
        parent = tm.extract_context(metadata)
        try:
            plan = self.plan(model, call.pinned_version, subject)
        except RequestError as exc:
            span = self._tracer.start_span(f"{rpc} {model}", context=parent, kind=SpanKind.SERVER)
            _fail(span, exc)
            span.end()
            raise
        span = self._tracer.start_span(
            f"{rpc} {model}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=self._attributes(plan, subject),
        )
        try:
            self._budget.record_request()
            routed = await self._execute(call, plan, deadline, span)
        except (RequestError, BackendError) as exc:
            self._record(plan, plan.primary.version, _fail(span, exc), started)
            raise
        finally:
            span.end()
        if routed.fallback or routed.served_version != plan.primary.version:
            span.set_attributes(
                {
                    tm.MODEL_VERSION: routed.served_version,
                    tm.FALLBACK: routed.fallback,
                    tm.MODEL_NAME: routed.served.model,
                }
            )
        self._record(plan, routed.served_version, "OK", started)
        return routed

    async def _untraced(
        self,
        call: BackendCall,
        subject: Subject,
        deadline: float,
        started: float,
        metadata: Metadata,
    ) -> Routed:
        plan = self.plan(call.model_name, call.pinned_version, subject)
        self._budget.record_request()
        try:
            routed = await self._execute(call, plan, deadline, None, metadata)
        except (RequestError, BackendError) as exc:
            self._record(plan, plan.primary.version, status_for(exc)[0].name, started)
            raise
        self._record(plan, routed.served_version, "OK", started)
        return routed

    def _record(self, plan: RoutePlan, version: str, status: str, started: float) -> None:
        self._metrics.observe(
            plan.flag, plan.variant, version, status, time.perf_counter() - started
        )

    async def _execute(
        self,
        call: BackendCall,
        plan: RoutePlan,
        deadline: float,
        span: Span | None,
        metadata: Metadata = (),
    ) -> Routed:
        primary, fallback = plan.primary, plan.fallback
        if fallback is not None and not self._breaker.allow(primary.key):
            # The cohort's version failed repeatedly: serve the default without a doomed call.
            if span is not None:
                span.add_event("circuit_open", {"version": primary.version})
            self._count_fallback(plan, primary, fallback, "circuit_open")
            return await self._hop(call, plan, fallback, deadline, span, metadata, fallback=True)
        try:
            routed = await self._hop(call, plan, primary, deadline, span, metadata, fallback=False)
        except BackendError as exc:
            if fallback is None or not exc.fallback_eligible:
                raise
            self._breaker.failure(primary.key)
            if deadline - time.monotonic() < MIN_RETRY_BUDGET_S or not self._budget.try_spend():
                log.warning(
                    "no fallback for %s (%s): retry budget or deadline exhausted", plan.flag, exc
                )
                raise
            log.warning(
                "%s variant %r failed (%s); falling back to the default variant",
                plan.flag,
                plan.variant,
                exc,
            )
            if span is not None:
                span.add_event(
                    "fallback",
                    {
                        "error": str(exc),
                        "from.version": primary.version,
                        "to.version": fallback.version,
                    },
                )
            self._count_fallback(plan, primary, fallback, "error")
            return await self._hop(call, plan, fallback, deadline, span, metadata, fallback=True)
        if fallback is not None:
            self._breaker.success(primary.key)
        return routed

    def _count_fallback(self, plan: RoutePlan, primary: Hop, fallback: Hop, cause: str) -> None:
        self.fallbacks += 1
        self._metrics.fallbacks.labels(plan.flag, primary.version, fallback.version, cause).inc()

    async def _hop(
        self,
        call: BackendCall,
        plan: RoutePlan,
        hop: Hop,
        deadline: float,
        parent: Span | None,
        metadata: Metadata,
        *,
        fallback: bool,
    ) -> Routed:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BackendError(
                ErrorKind.DEADLINE_EXCEEDED,
                "deadline passed before the call",
                backend=self._backend_name,
            )
        if parent is None:  # tracing off: no spans, the caller's trace context passed through
            reply = await call.send(self._backend, hop, remaining, metadata)
            return Routed(reply, plan, hop, call.served_version(reply, hop), fallback)
        span = self._tracer.start_span(
            f"{self._backend_name} infer {hop.model}:{hop.version or 'default'}",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            attributes={
                tm.BACKEND: self._backend_name,
                tm.MODEL_NAME: hop.model,
                tm.MODEL_VERSION: hop.version,
            },
        )
        try:
            reply = await call.send(
                self._backend, hop, remaining, tm.inject_metadata(trace.set_span_in_context(span))
            )
            served = call.served_version(reply, hop)
            if served != hop.version:
                span.set_attribute(tm.MODEL_VERSION, served)
            return Routed(reply, plan, hop, served, fallback)
        except BackendError as exc:
            span.set_status(Status(StatusCode.ERROR, f"{exc.kind}: {exc.message}"))
            raise
        finally:
            span.end()

    def _attributes(self, plan: RoutePlan, subject: Subject) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            tm.FLAG_KEY: plan.flag,
            tm.FLAG_VARIANT: plan.variant,
            tm.FLAG_PROVIDER: tm.PROVIDER_NAME,
            tm.FLAG_REVISION: plan.revision,
            tm.COHORT: plan.variant or "none",
            tm.REASON: plan.reason,
            tm.EXPOSED: plan.exposed,
            tm.MODEL_NAME: plan.primary.model,
            tm.MODEL_VERSION: plan.primary.version,
            tm.FALLBACK: False,
        }
        if plan.rule:
            attributes[tm.RULE] = plan.rule
        if self._trace_user_id and subject.id:
            attributes[tm.FLAG_CONTEXT_ID] = subject.id
        return attributes


def _fail(span: Span, exc: Exception) -> str:
    code, message = status_for(exc)
    span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}"))
    return str(code.name)


def _apply_parameters(
    request: kserve.ModelInferRequest, parameters: Mapping[str, Scalar], caller_set: frozenset[str]
) -> None:
    """Set the hop's variant parameters; one the caller sent explicitly wins.

    Parameters a previous hop added are removed first, so a fallback to the default variant
    never carries the candidate's parameters (say, its system prompt).
    """
    for name in [n for n in request.parameters if n not in caller_set]:
        del request.parameters[name]
    for name, value in parameters.items():
        if name in caller_set:
            continue
        set_parameter(request.parameters[name], value)


def set_parameter(param: kserve.InferParameter, value: Scalar) -> None:
    """Store a flag scalar in a KServe InferParameter under the matching type."""
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)
