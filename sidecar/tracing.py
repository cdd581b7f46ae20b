"""The tracing observer: a SERVER span per request and a CLIENT span per backend call.

The SERVER span starts with the plan's attributes and, when the request settles, gets the
outcome's (the version that served, ``trafficsplit.fallback`` and its cause) *before* it ends:
attributes set after ``end()`` are dropped by the SDK. Each CLIENT span's context is what the
backend call carries (W3C trace context), so Triton's own spans join the trace.

Spans are started with their attributes in one go and parented explicitly, without attaching
contexts: on this path every microsecond is latency the app pays.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from sidecar import render
from sidecar import telemetry as tm
from sidecar.errors import status_for
from sidecar.observers import Exchange, Metadata, Observer
from sidecar.outcome import Attempt, RequestOutcome
from sidecar.plan import Hop


class TracingObserver(Observer):
    def __init__(
        self, tracer: Tracer, *, trace_user_id: bool = False, kind: SpanKind = SpanKind.SERVER
    ) -> None:
        """``kind``: the request span's, SERVER in the sidecar; INTERNAL when the request path
        runs inside the app (:mod:`inproc`), whose own span is then its parent."""
        self._tracer = tracer
        self._trace_user_id = trace_user_id
        self._kind = kind

    def _server_span(self, exchange: Exchange, attributes: dict[str, Any]) -> Span:
        if self._trace_user_id and exchange.subject.id:
            attributes[tm.FLAG_CONTEXT_ID] = exchange.subject.id
        return self._tracer.start_span(
            f"{exchange.rpc} {exchange.model}",
            context=tm.extract_context(exchange.metadata),
            kind=self._kind,
            attributes=attributes,
        )

    def on_request(self, exchange: Exchange) -> None:
        assert exchange.assignment is not None
        exchange.span = self._server_span(
            exchange, render.planned_span_attributes(exchange.assignment)
        )

    def on_assign(self, exchange: Exchange) -> None:
        assert exchange.assignment is not None
        self._server_span(exchange, render.planned_span_attributes(exchange.assignment)).end()

    def on_rejected(self, exchange: Exchange, error: Exception) -> None:
        span = self._server_span(exchange, {tm.MODEL_NAME: exchange.model})
        _set_error(span, error)
        span.end()

    def before_attempt(self, exchange: Exchange, hop: Hop, backend: str) -> Metadata:
        parent = exchange.span
        assert isinstance(parent, Span)
        span = self._tracer.start_span(
            f"{backend} infer {hop.model}:{hop.version or 'default'}",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            attributes={
                tm.BACKEND: backend,
                tm.MODEL_NAME: hop.model,
                tm.MODEL_VERSION: hop.version,
            },
        )
        exchange.attempt_span = span
        return tm.inject_metadata(trace.set_span_in_context(span))

    def after_attempt(
        self, exchange: Exchange, attempt: Attempt, error: BaseException | None
    ) -> None:
        span = exchange.attempt_span
        exchange.attempt_span = None
        if not isinstance(span, Span):
            return
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, f"{attempt.result}: {error}"))
        span.end()

    def on_settled(self, exchange: Exchange, outcome: RequestOutcome) -> None:
        span = exchange.span
        if not isinstance(span, Span):
            return
        a = outcome.assignment
        span.set_attributes(render.settled_span_attributes(a))
        span.set_attribute(tm.SETTLEMENT, str(outcome.settlement))
        for attempt in outcome.attempts:
            if attempt.result != "OK":
                span.add_event(
                    "attempt_failed" if attempt.sent else "attempt_skipped",
                    {
                        "model": attempt.model,
                        "version": attempt.version,
                        "result": attempt.result,
                    },
                )
        if a.fallback is not None:
            span.add_event(
                "fallback",
                {
                    "cause": str(a.fallback),
                    "from.version": a.plan.primary.version,
                    "to.version": a.served_version,
                },
            )
        if outcome.status != "OK":
            span.set_status(Status(StatusCode.ERROR, f"{outcome.status}: {outcome.message}"))
        span.end()


def _set_error(span: Span, error: Exception) -> None:
    code, message = status_for(error)
    span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}"))
