"""The seam between routing and the engines that run a model.

Requests and responses are KServe-v2 protobuf messages (the ``service_pb2`` module that
``tritonclient`` ships). Routing sets ``model_name``/``model_version`` on the request and hands it
to a backend unchanged, so tensor payloads travel as the raw bytes the caller sent: the Triton
backend forwards them as they are, and only the embedded engine decodes them because it must run
the model itself.

Every backend failure is a :class:`BackendError`; foreign exceptions (tritonclient's, onnxruntime's)
are translated inside the adapter that calls them, with ``raise ... from exc``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

from tritonclient.grpc import service_pb2 as kserve


class ErrorKind(enum.StrEnum):
    """What went wrong, in terms routing can act on; mapped to gRPC codes in one place."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"  # the caller's fault: never retried
    NOT_FOUND = "NOT_FOUND"  # unknown model, or a version that is not loaded
    UNAVAILABLE = "UNAVAILABLE"  # engine down or unreachable, version not ready
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"  # message too large, queue full
    INTERNAL = "INTERNAL"  # the engine failed while running the model


# Failures of one version that another version may not share: worth one retry on the stable one.
FALLBACK_KINDS = frozenset(
    {ErrorKind.NOT_FOUND, ErrorKind.UNAVAILABLE, ErrorKind.DEADLINE_EXCEEDED, ErrorKind.INTERNAL}
)


class BackendError(Exception):
    """A backend call failed; ``kind`` says how, ``backend`` names the engine for the message."""

    def __init__(self, kind: ErrorKind, message: str, *, backend: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.backend = backend

    @property
    def fallback_eligible(self) -> bool:
        return self.kind in FALLBACK_KINDS

    def __str__(self) -> str:
        return f"{self.backend}: {self.message}"


@runtime_checkable
class InferenceBackend(Protocol):
    """An engine serving a Triton-layout model repository (``<model>/<version>/...``)."""

    @property
    def name(self) -> str:
        """Short engine name for logs, spans and error messages ("triton", "onnxruntime")."""
        ...

    async def start(self) -> None:
        """Open channels / load sessions. Raises BackendError(UNAVAILABLE) if it cannot."""
        ...

    async def close(self) -> None: ...

    async def server_ready(self) -> bool: ...

    async def model_ready(self, model: str, version: str) -> bool:
        """``version`` may be "" (the model's default/latest version)."""
        ...

    async def version_states(
        self, targets: Iterable[tuple[str, str]]
    ) -> Mapping[tuple[str, str], str | None]:
        """For each ``(model, version)`` target: None if it is ready to serve, else why not.

        For readiness detail (health, metrics, logs): the server asks about every version a flag
        can route to. Never raises; an unreachable engine is a reason like any other.
        """
        ...

    async def model_metadata(self, model: str, version: str) -> kserve.ModelMetadataResponse: ...

    async def model_config(self, model: str, version: str) -> kserve.ModelConfigResponse: ...

    async def infer(
        self,
        request: kserve.ModelInferRequest,
        *,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> kserve.ModelInferResponse:
        """Run ``request`` on ``request.model_name``/``request.model_version``.

        ``timeout`` is the caller's remaining deadline in seconds (None = no deadline);
        ``metadata`` is extra outgoing metadata (W3C trace context) for remote engines.
        """
        ...


@runtime_checkable
class RawInferenceBackend(InferenceBackend, Protocol):
    """A backend that can forward a serialized ModelInferRequest as it is (Triton).

    The sidecar then never parses tensors: it reads the routing header off the wire and appends
    the target model/version (see :mod:`sidecar.wire`).
    """

    async def infer_raw(
        self,
        request: bytes,
        *,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...] = (),
        what: str = "the model",
    ) -> bytes: ...


class BackendStream(Protocol):
    """One bidirectional ``ModelStreamInfer`` call to a backend, bytes in and bytes out.

    Every failure is a :class:`BackendError` (translated in the adapter): from ``read`` when the
    stream ends with an error status, from ``write``/``done_writing`` when it has already ended.
    """

    async def write(self, request: bytes) -> None:
        """Send one serialized ``ModelInferRequest``."""
        ...

    async def done_writing(self) -> None:
        """No more requests: the backend ends the stream once it has answered them."""
        ...

    async def read(self) -> bytes | None:
        """The next serialized ``ModelStreamInferResponse``; None when the stream ended OK."""
        ...

    def cancel(self) -> None:
        """Abandon the call (a fallback replaces it, or the caller went away)."""
        ...

    def error_of(self, message: str) -> BackendError:
        """A response's ``error_message`` as a BackendError of the right kind (the backend's
        wording decides: an unknown version is NOT_FOUND, a malformed request INVALID_ARGUMENT)."""
        ...


@runtime_checkable
class StreamingBackend(RawInferenceBackend, Protocol):
    """A backend that serves ``ModelStreamInfer`` (decoupled models, e.g. token streaming)."""

    def open_stream(
        self,
        *,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...] = (),
        what: str = "the model",
    ) -> BackendStream:
        """Start a stream; it connects lazily (the first write or read reports a failure)."""
        ...
