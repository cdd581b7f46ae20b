"""An OpenFeature hook that reports every evaluation as the ``feature_flag.evaluation`` event.

It lives outside ``flags`` because ``flags`` never imports OpenTelemetry. Attributes follow the
current OpenTelemetry feature-flag semantic conventions, with the names the sidecar's spans use
(``feature_flag.result.variant``, ``feature_flag.provider.name``; the OpenFeature SDK's own
``create_evaluation_event`` still writes the older ``feature_flag.variant`` and
``feature_flag.provider_name``), plus ``ml.model.name`` / ``ml.model.version`` from the
provider's flag metadata. The event goes to an OpenTelemetry logger (event name
``feature_flag.evaluation``) and, when a span is recording, onto that span as a span event.

Emitting is in-memory work: the SDK's batch processors export off the caller's thread.
"""

from __future__ import annotations

from typing import Any

from openfeature.flag_evaluation import FlagEvaluationDetails, FlagValueType, Reason
from openfeature.hook import Hook, HookContext, HookHints
from opentelemetry import _logs, trace

from sidecar.telemetry import (
    FLAG_CONTEXT_ID,
    FLAG_KEY,
    FLAG_PROVIDER,
    FLAG_VARIANT,
    MODEL_NAME,
    MODEL_VERSION,
)

EVENT_NAME = "feature_flag.evaluation"
FLAG_REASON = "feature_flag.result.reason"
FLAG_VERSION = "feature_flag.version"
ERROR_TYPE = "error.type"
ERROR_MESSAGE = "error.message"


def evaluation_attributes(
    hook_context: HookContext, details: FlagEvaluationDetails[FlagValueType]
) -> dict[str, str]:
    """The event's attributes for one evaluation (pure: tested without an SDK pipeline)."""
    meta = details.flag_metadata
    attributes = {
        FLAG_KEY: details.flag_key,
        FLAG_REASON: str(details.reason or Reason.UNKNOWN).lower(),
    }
    if hook_context.provider_metadata is not None:
        attributes[FLAG_PROVIDER] = hook_context.provider_metadata.name
    if details.variant:
        attributes[FLAG_VARIANT] = details.variant
    if targeting_key := hook_context.evaluation_context.targeting_key:
        attributes[FLAG_CONTEXT_ID] = targeting_key
    for name, key in ((FLAG_VERSION, "version"), (MODEL_NAME, "model"), (MODEL_VERSION, "model_version")):  # fmt: skip
        if (value := meta.get(key)) is not None:
            attributes[name] = str(value)
    if details.reason == Reason.ERROR:
        attributes[ERROR_TYPE] = str(details.error_code or "general").lower()
        if details.error_message:
            attributes[ERROR_MESSAGE] = details.error_message
    return attributes


class OpenTelemetryEvaluationHook(Hook):
    """Add with ``api.add_hooks([OpenTelemetryEvaluationHook()])`` (or per client)."""

    def __init__(
        self, logger_provider: _logs.LoggerProvider | None = None, *, span_events: bool = True
    ) -> None:
        provider = logger_provider or _logs.get_logger_provider()
        self._logger = provider.get_logger("trafficsplit.openfeature")
        self._span_events = span_events

    def finally_after(
        self,
        hook_context: HookContext,
        details: FlagEvaluationDetails[FlagValueType],
        hints: HookHints,
    ) -> None:
        attributes: dict[str, Any] = evaluation_attributes(hook_context, details)
        self._logger.emit(event_name=EVENT_NAME, attributes=attributes)
        span = trace.get_current_span()
        if self._span_events and span.is_recording():
            span.add_event(EVENT_NAME, attributes)
