"""The OTel hook emits ``feature_flag.evaluation`` with the semantic-convention attributes."""

from __future__ import annotations

from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import digits_flag

from flags.openfeature import TrafficSplitProvider
from flags.sources.memory import MemoryFlagSource
from flags.store import FlagStore
from sidecar.openfeature_hook import OpenTelemetryEvaluationHook


def setup() -> tuple[
    OpenFeatureClient, InMemoryLogRecordExporter, InMemorySpanExporter, TracerProvider
]:
    store = FlagStore()
    MemoryFlagSource(store).put("digits", digits_flag(revision=5))
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    api.set_provider(TrafficSplitProvider(store), domain="hooked")
    client = api.get_client("hooked")  # hooks belong to this client object
    client.add_hooks([OpenTelemetryEvaluationHook(logger_provider)])
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    return client, logs, spans, tracer_provider


def test_a_resolved_evaluation_emits_the_event_on_the_log_and_the_span() -> None:
    client, logs, spans, tracer_provider = setup()
    with tracer_provider.get_tracer("t").start_as_current_span("request"):
        client.get_object_details("digits", {}, EvaluationContext("alice@example.com"))
    (record,) = logs.get_finished_logs()
    expected = {
        "feature_flag.key": "digits",
        "feature_flag.provider.name": "trafficsplit",
        "feature_flag.result.variant": "candidate",
        "feature_flag.result.reason": "targeting_match",
        "feature_flag.context.id": "alice@example.com",
        "feature_flag.version": "5",
        "ml.model.name": "digits",
        "ml.model.version": "2",
    }
    assert record.log_record.event_name == "feature_flag.evaluation"
    assert dict(record.log_record.attributes or {}) == expected
    (span,) = spans.get_finished_spans()
    (event,) = span.events
    assert event.name == "feature_flag.evaluation" and dict(event.attributes or {}) == expected


def test_an_error_carries_error_type_and_message_and_no_variant() -> None:
    client, logs, spans, _ = setup()
    client.get_string_details("nope", "d", EvaluationContext("u-1"))
    (record,) = logs.get_finished_logs()
    attributes = dict(record.log_record.attributes or {})
    assert attributes["feature_flag.result.reason"] == "error"
    assert attributes["error.type"] == "flag_not_found"
    assert attributes["error.message"] == "no flag named 'nope'"
    assert "feature_flag.result.variant" not in attributes
    assert spans.get_finished_spans() == ()  # no span was recording: the log event only
