"""One decorator turns every failure of a servicer method into a clear gRPC status."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from sidecar.backends.base import BackendError
from sidecar.errors import RequestError, status_for

log = logging.getLogger("sidecar.grpc")

R = TypeVar("R")
Method = Callable[[Any, Any, Any], Awaitable[R]]


def grpc_errors(method: Method[R]) -> Method[R]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Any) -> R:
        try:
            return await method(self, request, context)
        except (RequestError, BackendError) as exc:
            code, message = status_for(exc)
            await context.abort(code, message)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # a bug must cost one request, never the sidecar
            log.exception("unexpected error in %s", method.__name__)
            code, message = status_for(exc)
            await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    return wrapper
