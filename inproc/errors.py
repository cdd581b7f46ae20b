"""The in-process client's one error tree; every failure an app can see is one of these.

InProcessError                     .code (a gRPC status, as the sidecar would answer) + .message
├── InvalidInput                   INVALID_ARGUMENT: fix the inputs, user id or attributes
├── ConfigurationError             the client's settings are wrong (raised by from_settings)
├── RoutingError                   the request was refused before any backend call: no flag
│                                  (FAILED_PRECONDITION), pinning forbidden, shed (RESOURCE_EXHAUSTED)
└── BackendFailure                 the backend failed and no fallback answered (UNAVAILABLE,
                                   DEADLINE_EXCEEDED, NOT_FOUND, INTERNAL, ...)

The sidecar's exceptions are translated here, with the sidecar's own status mapping
(:func:`sidecar.errors.status_for`), so an app sees the same code whether it calls the sidecar
or routes in-process.
"""

from __future__ import annotations

import grpc

from sidecar.backends.base import BackendError
from sidecar.errors import InvalidRequest, RequestError, status_for


class InProcessError(Exception):
    """Base class: ``code`` is the gRPC status the sidecar would answer with."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidInput(InProcessError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ConfigurationError(InProcessError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class RoutingError(InProcessError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class BackendFailure(InProcessError):
    code = grpc.StatusCode.UNAVAILABLE


def translate(exc: Exception) -> InProcessError:
    """The app-facing error for a sidecar exception (raise it ``from exc``)."""
    code, message = status_for(exc)
    if isinstance(exc, InvalidRequest) or (
        isinstance(exc, BackendError) and code is grpc.StatusCode.INVALID_ARGUMENT
    ):
        return InvalidInput(message, code=code)
    if isinstance(exc, RequestError):
        return RoutingError(message, code=code)
    if isinstance(exc, BackendError):
        return BackendFailure(message, code=code)
    return InProcessError(message, code=code)
