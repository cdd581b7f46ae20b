"""OpenTelemetry wiring: a tracer configured by the standard ``OTEL_*`` variables, the span
attribute names the sidecar uses, and W3C trace-context propagation over gRPC metadata.

Exporter choice: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console`` or ``none``). When it is unset,
spans are exported over OTLP/gRPC only if an ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` is set, so a
sidecar started without tracing configured does not spam logs trying to reach localhost:4317.
The OTLP exporter itself reads the endpoint, headers, TLS and timeout variables; the SDK reads
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER[_ARG]`` and ``OTEL_BSP_*``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("sidecar.telemetry")

PROVIDER_NAME = "trafficsplit"

# OpenTelemetry feature-flag semantic conventions, plus our own and the ML model ones.
FLAG_KEY = "feature_flag.key"
FLAG_VARIANT = "feature_flag.result.variant"
FLAG_PROVIDER = "feature_flag.provider.name"
FLAG_CONTEXT_ID = "feature_flag.context.id"
FLAG_REVISION = "trafficsplit.flag.revision"
COHORT = "trafficsplit.cohort"
REASON = "trafficsplit.reason"
RULE = "trafficsplit.rule"
FALLBACK = "trafficsplit.fallback"
FALLBACK_CAUSE = "trafficsplit.fallback.cause"  # error | timeout | circuit_open | not_ready
ATTEMPTED_VERSION = "trafficsplit.attempted.version"  # the cohort's version that did not answer
EXPOSED = "trafficsplit.exposed"
MEMBERSHIP = (
    "trafficsplit.membership"  # exposed | targeted | not_in_experiment | pinned | unflagged
)
SETTLEMENT = "trafficsplit.outcome"  # served | fallback_* | failed
MODEL_NAME = "ml.model.name"
MODEL_VERSION = "ml.model.version"
BACKEND = "trafficsplit.backend"

_propagator = TraceContextTextMapPropagator()
_TRACE_KEYS = frozenset({"traceparent", "tracestate"})


def build_tracer_provider(service_name: str = "trafficsplit-sidecar") -> TracerProvider:
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    exporter = _exporter_from_env()
    if exporter is None:
        return TracerProvider(resource=resource, sampler=ALWAYS_OFF)
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER, as usual
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def tracing_enabled() -> bool:
    """Whether spans would go anywhere. When not, the router creates none: building a span with
    a dozen attributes costs tens of microseconds per request, for nobody."""
    return _exporter_choice() is not None


def _exporter_choice() -> str | None:
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint_set = any(
        os.environ.get(v)
        for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    if choice == "none" or (not choice and not endpoint_set):
        return None
    return choice or "otlp"


def _exporter_from_env() -> SpanExporter | None:
    choice = _exporter_choice()
    if choice is None:
        log.info("tracing: spans are not exported (set OTEL_EXPORTER_OTLP_ENDPOINT to export)")
        return None
    if choice == "console":
        return ConsoleSpanExporter()
    if choice != "otlp":
        log.warning("tracing: unsupported OTEL_TRACES_EXPORTER=%r, using otlp", choice)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    log.info("tracing: exporting spans over OTLP/gRPC")
    return OTLPSpanExporter()


def extract_context(metadata: Iterable[tuple[str, str | bytes]]) -> otel_context.Context | None:
    """The caller's trace context from gRPC metadata (``traceparent``/``tracestate``), if any."""
    carrier = {k: v for k, v in metadata if k in _TRACE_KEYS and isinstance(v, str)}
    return _propagator.extract(carrier) if carrier else None


def passthrough_metadata(
    metadata: Iterable[tuple[str, str | bytes]],
) -> tuple[tuple[str, str], ...]:
    """With tracing off, forward the caller's trace context to the backend unchanged."""
    return tuple(
        (k, v)
        for k, v in metadata
        if (k == "traceparent" or k == "tracestate") and isinstance(v, str)
    )


def inject_metadata(ctx: otel_context.Context | None = None) -> tuple[tuple[str, str], ...]:
    """Outgoing metadata carrying the current span's trace context to the backend."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=ctx)
    return tuple(carrier.items())


def metadata_dict(metadata: Iterable[tuple[str, str | bytes]] | None) -> Mapping[str, str]:
    """gRPC metadata as a dict of text values (binary ``-bin`` entries are dropped)."""
    return {k: v for k, v in (metadata or ()) if isinstance(v, str)}
