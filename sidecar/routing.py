"""The data plane: plan a route from the flags, call the backend, fall back, trace it all.

Transport-agnostic: the KServe-v2 facade and the native API both call :meth:`Router.infer` and
:meth:`Router.assign`. Flag evaluation reads the in-memory snapshot only; the one I/O on the
request path is the backend call (twice at most, when the cohort's version fails).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from tritonclient.grpc import service_pb2 as kserve

from flags import Subject
from flags.schema import Scalar
from flags.store import FlagStore
from sidecar import telemetry as tm
from sidecar.backends.base import BackendError, ErrorKind, InferenceBackend
from sidecar.circuit import CircuitBreaker
from sidecar.errors import RequestError, status_for
from sidecar.metrics import SidecarMetrics
from sidecar.plan import Hop, RoutePlan, plan_route
from sidecar.retry_budget import RetryBudget

log = logging.getLogger("sidecar.routing")

MIN_RETRY_BUDGET_S = 0.005  # do not start a fallback with less deadline than this left


@dataclass(frozen=True, slots=True)
class Routed:
    """A backend response plus what the caller is told about its assignment."""

    response: kserve.ModelInferResponse
    plan: RoutePlan
    served: Hop
    fallback: bool

    @property
    def served_version(self) -> str:
        return self.response.model_version or self.served.version


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
    ) -> None:
        self._store = store
        self._backend = backend
        self._tracer = tracer
        self._budget = budget or RetryBudget()
        self._breaker = breaker or CircuitBreaker()
        self._metrics = metrics or SidecarMetrics()
        self._default_timeout_s = default_timeout_s
        self._trace_user_id = trace_user_id
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
        with self._tracer.start_as_current_span(
            f"{rpc} {model}", kind=SpanKind.SERVER, context=tm.extract_context(metadata)
        ) as span:
            plan = self.plan(model, "", subject)
            self._annotate(span, plan, subject)
            return plan

    async def infer(
        self,
        request: kserve.ModelInferRequest,
        subject: Subject,
        *,
        timeout: float | None,
        rpc: str,
        metadata: Iterable[tuple[str, str | bytes]] = (),
    ) -> Routed:
        """Route ``request`` (its ``model_version`` pins a version when set)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self._default_timeout_s)
        model = request.model_name
        with self._tracer.start_as_current_span(
            f"{rpc} {model}",
            kind=SpanKind.SERVER,
            context=tm.extract_context(metadata),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            started = time.perf_counter()
            plan: RoutePlan | None = None
            try:
                plan = self.plan(model, request.model_version, subject)
                self._annotate(span, plan, subject)
                self._budget.record_request()
                routed = await self._execute(request, plan, deadline)
            except (RequestError, BackendError) as exc:
                code, message = status_for(exc)
                span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}"))
                if plan is not None:
                    self._metrics.observe(
                        plan.flag,
                        plan.variant,
                        plan.primary.version,
                        code.name,
                        time.perf_counter() - started,
                    )
                raise
            self._metrics.observe(
                plan.flag, plan.variant, routed.served_version, "OK", time.perf_counter() - started
            )
            span.set_attribute(tm.MODEL_NAME, routed.served.model)
            span.set_attribute(tm.MODEL_VERSION, routed.served_version)
            span.set_attribute(tm.FALLBACK, routed.fallback)
            return routed

    async def _execute(
        self, request: kserve.ModelInferRequest, plan: RoutePlan, deadline: float
    ) -> Routed:
        caller_set = frozenset(request.parameters)
        primary, fallback = plan.primary, plan.fallback
        if fallback is not None and not self._breaker.allow(primary.key):
            # The cohort's version failed repeatedly: serve the default without a doomed call.
            trace.get_current_span().add_event("circuit_open", {"version": primary.version})
            self.fallbacks += 1
            self._metrics.fallbacks.labels(
                plan.flag, primary.version, fallback.version, "circuit_open"
            ).inc()
            response = await self._call(request, fallback, deadline, caller_set)
            return Routed(response, plan, fallback, fallback=True)
        try:
            response = await self._call(request, primary, deadline, caller_set)
        except BackendError as exc:
            if not exc.fallback_eligible:
                raise
            if fallback is None:
                raise
            self._breaker.failure(primary.key)
            remaining = deadline - time.monotonic()
            if remaining < MIN_RETRY_BUDGET_S or not self._budget.try_spend():
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
            trace.get_current_span().add_event(
                "fallback",
                {
                    "error": str(exc),
                    "from.version": primary.version,
                    "to.version": fallback.version,
                },
            )
            self.fallbacks += 1
            response = await self._call(request, fallback, deadline, caller_set)
            return Routed(response, plan, fallback, fallback=True)
        if fallback is not None:
            self._breaker.success(primary.key)
        return Routed(response, plan, primary, fallback=False)

    async def _call(
        self,
        request: kserve.ModelInferRequest,
        hop: Hop,
        deadline: float,
        caller_set: frozenset[str],
    ) -> kserve.ModelInferResponse:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BackendError(
                ErrorKind.DEADLINE_EXCEEDED,
                "deadline passed before the call",
                backend=self._backend.name,
            )
        request.model_name = hop.model
        request.model_version = hop.version
        _apply_parameters(request, hop.parameters, caller_set)
        with self._tracer.start_as_current_span(
            f"{self._backend.name} infer {hop.model}:{hop.version or 'default'}",
            kind=SpanKind.CLIENT,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            span.set_attribute(tm.BACKEND, self._backend.name)
            span.set_attribute(tm.MODEL_NAME, hop.model)
            span.set_attribute(tm.MODEL_VERSION, hop.version)
            try:
                response = await self._backend.infer(
                    request, timeout=remaining, metadata=tm.inject_metadata()
                )
            except BackendError as exc:
                span.set_status(Status(StatusCode.ERROR, f"{exc.kind}: {exc.message}"))
                raise
            if response.model_version:
                span.set_attribute(tm.MODEL_VERSION, response.model_version)
            return response

    def _annotate(self, span: trace.Span, plan: RoutePlan, subject: Subject) -> None:
        span.set_attributes(
            {
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
        )
        if plan.rule:
            span.set_attribute(tm.RULE, plan.rule)
        if self._trace_user_id and subject.id:
            span.set_attribute(tm.FLAG_CONTEXT_ID, subject.id)


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
        param = request.parameters[name]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = str(value)
