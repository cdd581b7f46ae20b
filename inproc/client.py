"""The sidecar's request path inside a Python app: no hop, same decisions, same telemetry.

:class:`InProcessClient` hosts the :class:`~sidecar.assembly.RequestPath` the sidecar's server
hosts (flag store fed from Redis or a file, the Router with its fallback, breaker, retry budget
and readiness, and the metrics, tracing, signal, shadow and exposure observers) and calls Triton
(or the embedded onnxruntime engine) directly from the app's event loop. Nothing is copied from
the sidecar, so an app and a sidecar configured alike assign every user to the same variant and
serve the same version.

Off the request path, on the app's event loop while the client is open: the flag source's
subscription and reconcile loop, the signal and event flush tasks, the readiness checks, and
(optionally) a ``/metrics`` listener on its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from http.server import HTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, start_http_server
from tritonclient.grpc import service_pb2 as kserve

from flags import Subject
from flags.schema import Scalar
from flags.store import FlagStore
from inproc.errors import (
    BackendFailure,
    ConfigurationError,
    InProcessError,
    InvalidInput,
    translate,
)
from inproc.tensors import Array, Inputs, build_request, decode_outputs
from sidecar.assembly import RequestPath
from sidecar.backends.base import BackendError
from sidecar.calls import MessageCall
from sidecar.errors import RequestError
from sidecar.metrics import SidecarMetrics
from sidecar.outcome import Assignment
from sidecar.routing import Router
from sidecar.settings import Settings
from sidecar.subjects import SubjectRules, checked_subject
from sidecar.telemetry import build_tracer_provider, inject_metadata, tracing_enabled

log = logging.getLogger("inproc")

RPC = "InProcessInfer"  # the request span's name prefix and the Exchange's rpc
Attributes = Mapping[str, str | int | float | bool]


class InferenceResult(NamedTuple):
    """The model's outputs plus the assignment: variant, served version, fallback, membership."""

    outputs: Mapping[str, Array]
    assignment: Assignment
    response: kserve.ModelInferResponse  # as Triton sent it (parameters, id)

    def as_numpy(self, name: str) -> Array | None:
        """tritonclient's ``InferResult.as_numpy``: the output, or None if there is none."""
        return self.outputs.get(name)

    @property
    def variant(self) -> str:
        return self.assignment.variant

    @property
    def model_version(self) -> str:
        """The version that served (after a fallback: the default variant's)."""
        return self.assignment.served_version


class InProcessClient:
    """Route inference by flag cohort from inside the app; use as ``async with``."""

    def __init__(
        self, path: RequestPath, *, owns_tracer: bool = True, traced: bool = False
    ) -> None:
        """Prefer :meth:`from_settings`; this takes a request path built elsewhere (``traced``:
        whether it has a tracing observer; if not, the app's trace context is passed on)."""
        s = path.settings
        self._path = path
        self._context = _no_context if traced else app_context
        self._router = path.router
        self._owns_tracer = owns_tracer
        self._rules = SubjectRules(
            allow_anonymous=s.allow_anonymous,
            max_user_id_length=s.max_user_id_length,
            max_attributes=s.max_attributes,
            max_attribute_length=s.max_attribute_length,
        )
        self._max_user_id_length = s.max_user_id_length
        self._readiness_task: asyncio.Task[None] | None = None
        self._metrics_server: HTTPServer | None = None
        self.metrics_address = ""
        self._started = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        /,
        *,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        **overrides: Any,
    ) -> InProcessClient:
        """A client configured like a sidecar: ``overrides`` are :class:`Settings` fields
        (``redis_url``, ``triton_url``, ``backend``, ``stable``, ``metrics_listen``, ...; see
        ``trafficsplit-sidecar --help``). ``registry``: the app's Prometheus registry (default: a
        registry of the client's own, served on ``metrics_listen`` if set). ``tracer_provider``:
        the app's, which turns tracing on (default: from the ``OTEL_*`` variables, as the
        sidecar does). Raises :class:`ConfigurationError` for a setting that does not exist or
        does not parse."""
        settings = _settings(settings or Settings(), overrides)
        provider = tracer_provider or build_tracer_provider()
        traced = records_spans(provider, explicit=tracer_provider is not None)
        try:
            path = RequestPath.build(
                settings,
                tracer_provider=provider,
                registry=registry,
                span_kind=SpanKind.INTERNAL,  # the app's span is the parent; no server here
                tracing=traced,
            )
        except ValueError as exc:  # prometheus_client: "Duplicated timeseries in CollectorRegistry"
            raise ConfigurationError(
                f"the registry already holds trafficsplit series ({exc}): one client per "
                "Prometheus registry; pass another registry=, or none"
            ) from exc
        return cls(path, owns_tracer=tracer_provider is None, traced=traced)

    @property
    def settings(self) -> Settings:
        return self._path.settings

    @property
    def store(self) -> FlagStore:
        """The flag store (``store.health``: whether the flags are fresh, from where)."""
        return self._path.store

    @property
    def router(self) -> Router:
        return self._router

    @property
    def metrics(self) -> SidecarMetrics:
        """The sidecar's Prometheus series (``metrics.registry``), recorded in this process."""
        return self._path.metrics

    async def start(self) -> None:
        """Open the backends, load the flags and start the background tasks."""
        if self._started:
            return
        await self._path.start()
        self._started = True
        self._readiness_task = asyncio.create_task(self._watch_readiness(), name="inproc-ready")
        listen = self.settings.metrics_listen
        if listen:
            host, _, port = listen.rpartition(":")
            server, _thread = start_http_server(
                int(port), addr=host or "127.0.0.1", registry=self.metrics.registry
            )
            self._metrics_server = server
            self.metrics_address = f"{host or '127.0.0.1'}:{server.server_port}"

    async def close(self) -> None:
        """Flush signals and events, close connections (call after the last request)."""
        if not self._started:
            return
        self._started = False
        if self._readiness_task is not None:
            self._readiness_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._readiness_task
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        await self._path.close(shutdown_tracer=self._owns_tracer)

    async def __aenter__(self) -> InProcessClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def refresh_readiness(self) -> Mapping[str, str]:
        """Check now which flagged versions are loaded (done every ``readiness_interval_s``
        anyway); returns the unready ones with Triton's reason."""
        return await self._path.refresh_readiness()

    async def _watch_readiness(self) -> None:
        while True:
            try:
                await self._path.refresh_readiness()
            except Exception:  # a bug here must not stop the checks for good
                log.exception("readiness check failed")
            await asyncio.sleep(self.settings.readiness_interval_s)

    async def infer(
        self,
        model: str,
        inputs: Inputs,
        *,
        user_id: str = "",
        attributes: Attributes | None = None,
        version: str = "",
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Scalar] | None = None,
        timeout: float | None = None,
    ) -> InferenceResult:
        """Infer with the version ``user_id``'s cohort gets (``version`` pins one, if the flag
        allows). ``timeout`` in seconds covers the fallback too. Raises an
        :class:`~inproc.errors.InProcessError` (never anything else for bad input)."""
        if not self._started:
            raise InProcessError(
                "the client is not started (or already closed): use `async with "
                "InProcessClient.from_settings(...)` or await start()",
                code=grpc.StatusCode.FAILED_PRECONDITION,
            )
        subject = self._subject(user_id, attributes)
        request = build_request(
            model, inputs, version=version, outputs=outputs, parameters=parameters
        )
        try:
            routed = await self._router.infer(
                MessageCall(request), subject, timeout=timeout, rpc=RPC, metadata=self._context()
            )
        except (RequestError, BackendError) as exc:
            raise translate(exc) from exc
        response: kserve.ModelInferResponse = routed.response
        try:
            decoded = decode_outputs(response)
        except ValueError as exc:  # the backend's bytes do not fit its own shapes
            raise BackendFailure(
                f"model {model!r} answered outputs that do not decode: {exc}",
                code=grpc.StatusCode.INTERNAL,
            ) from exc
        return InferenceResult(decoded, routed.assignment, response)

    def assign(
        self, model: str, *, user_id: str, attributes: Attributes | None = None
    ) -> Assignment:
        """The assignment alone (no inference), as the sidecar's ``Assign``."""
        try:
            return self._router.assign(model, self._subject(user_id, attributes))
        except RequestError as exc:
            raise translate(exc) from exc

    def track(
        self,
        flag: str,
        user_id: str,
        metric: str,
        value: float,
        *,
        time_ms: int = 0,
        idempotency_key: str = "",
    ) -> str:
        """Record an outcome (buffered; flushed off the request path); returns its event id."""
        try:
            outcome = self._path.events.track(
                flag=flag,
                user_id=user_id,
                metric=metric,
                value=value,
                time_ms=time_ms,
                idempotency_key=idempotency_key,
            )
        except RequestError as exc:
            raise translate(exc) from exc
        return str(outcome.event_id)

    def _subject(self, user_id: str, attributes: Attributes | None) -> Subject:
        """The subject exactly as the sidecar would see it: attributes arrive there as text
        (``x-attr-*`` metadata), so they are text here too, and the same limits apply."""
        if not isinstance(user_id, str):
            raise InvalidInput(f"user_id must be a string, not {type(user_id).__name__}")
        if not attributes and user_id and len(user_id) <= self._max_user_id_length:
            return Subject(user_id)  # the common case, checked as checked_subject would
        text: dict[str, str] = {}
        for name, value in (attributes or {}).items():
            if isinstance(value, bool):
                text[name] = "true" if value else "false"
            elif isinstance(value, (str, int, float)):
                text[name] = str(value)
            else:
                raise InvalidInput(
                    f"attribute {name!r} is a {type(value).__name__}; use str, int, float or bool"
                )
        try:
            return checked_subject(user_id, text, self._rules, where="user_id=")
        except RequestError as exc:
            raise translate(exc) from exc


def records_spans(provider: TracerProvider, *, explicit: bool) -> bool:
    """Whether a tracing observer would record anything. A provider whose sampler drops every
    span (``OTEL_TRACES_SAMPLER=always_off``) records nothing, yet starting two non-recording
    spans per request costs tens of microseconds: then the request path has no tracing
    observer, and the app's trace context still reaches Triton (:func:`app_context`)."""
    if getattr(provider, "sampler", None) is ALWAYS_OFF:
        return False
    return explicit or tracing_enabled()


def _no_context() -> tuple[tuple[str, str], ...]:
    return ()


def app_context() -> tuple[tuple[str, str], ...]:
    """The app's current trace context as metadata, for the request path to pass on when it
    records no spans itself (and to ignore when it does: its spans are children of the current
    span anyway). Nothing when the app is not in a span."""
    if not trace.get_current_span().get_span_context().is_valid:
        return ()
    return inject_metadata()


def _settings(base: Settings, overrides: Mapping[str, Any]) -> Settings:
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigurationError(
            f"unknown setting(s) {unknown}; settings are the sidecar's options with underscores "
            "(redis_url, triton_url, backend, stable, metrics_listen, ...)"
        )
    values: dict[str, Any] = {}
    for name, value in overrides.items():
        kind = str(fields[name].type)
        if fields[name].metadata.get("repeatable"):
            value = (value,) if isinstance(value, str) else tuple(value)
        elif kind.startswith("Path") and isinstance(value, str):
            value = Path(value)
        values[name] = value
    settings = dataclasses.replace(base, **values)
    try:
        settings.stable_versions()
        settings.named_backends()
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    choices = {n: f.metadata["choices"] for n, f in fields.items() if "choices" in f.metadata}
    for name, allowed in choices.items():
        if getattr(settings, name) not in allowed:
            raise ConfigurationError(f"{name}={getattr(settings, name)!r}: choose from {allowed}")
    return settings
