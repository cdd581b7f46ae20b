"""Sidecar errors and the one place that chooses gRPC status codes.

RequestError                      the request cannot be served as sent
├── InvalidRequest                INVALID_ARGUMENT: fix the request (message says how)
├── UnknownModel                  NOT_FOUND
├── PinningForbidden              FAILED_PRECONDITION: the flag forbids explicit versions
├── NoFlag                        FAILED_PRECONDITION: no flag and no stable version configured
├── Overloaded                    RESOURCE_EXHAUSTED: shed (too many in flight, or the deadline
│                                 is shorter than the stable version needs)
└── Unsupported                   UNIMPLEMENTED: this backend cannot serve the method (streams
                                  on the embedded engine)
BackendError (sidecar.backends)   mapped by its ErrorKind
anything else                     INTERNAL (a bug: logged with its traceback, costs one request)

:func:`status_for` is the one place that picks a gRPC status; the server interceptor
(:mod:`sidecar.interceptor`) calls it for every method of every service.
"""

from __future__ import annotations

import grpc

from sidecar.backends.base import BackendError, ErrorKind


class RequestError(Exception):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(RequestError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class UnknownModel(RequestError):
    code = grpc.StatusCode.NOT_FOUND


class PinningForbidden(RequestError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class NoFlag(RequestError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Overloaded(RequestError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unsupported(RequestError):
    code = grpc.StatusCode.UNIMPLEMENTED


_BACKEND_CODES = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}


def status_for(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller gets for ``exc``."""
    if isinstance(exc, RequestError):
        return exc.code, exc.message
    if isinstance(exc, BackendError):
        return _BACKEND_CODES[exc.kind], str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
