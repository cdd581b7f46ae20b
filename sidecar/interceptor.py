"""The one place where failures become gRPC statuses, for every method of every service.

A server interceptor wraps each method handler (KServe facade, native API, health, reflection):

- a request whose bytes do not decode gets INVALID_ARGUMENT ("malformed <Message>: ...") instead
  of gRPC's UNKNOWN and a logged traceback; the request deserializer is wrapped so the failure is
  caught where it happens, and enumerating services is not needed (methods added later are
  covered);
- :class:`~sidecar.errors.RequestError` and :class:`~sidecar.backends.base.BackendError` get the
  status :func:`~sidecar.errors.status_for` picks, with the message that says what to fix, and no
  traceback (the caller's error is not the sidecar's);
- anything else is a bug: logged with its traceback, INTERNAL, and it costs one request only.

Each error status is counted (``trafficsplit_grpc_errors_total{method, status}``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from sidecar.backends.base import BackendError
from sidecar.errors import InvalidRequest, RequestError, status_for

log = logging.getLogger("sidecar.grpc")

ErrorCounter = Callable[[str, str], None]


class _Undecodable:
    """What the wrapped deserializer returns for bytes that are not the expected message."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, count_error: ErrorCounter = lambda method, status: None) -> None:
        self._count_error = count_error
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = str(details.method)
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        message = method.rsplit("/", 1)[-1]
        deserializer = _safe_deserializer(handler.request_deserializer)
        serializer = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, message, handler.unary_unary),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(method, message, handler.unary_stream),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._stream_unary(method, message, handler.stream_unary),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream_stream(method, message, handler.stream_stream),
            request_deserializer=deserializer,
            response_serializer=serializer,
        )

    async def _abort(self, method: str, context: Any, exc: BaseException) -> None:
        if isinstance(exc, (RequestError, BackendError)):
            code, text = status_for(exc)
            log.debug("%s: %s %s", method, code.name, text)
        elif isinstance(exc, NotImplementedError):
            # grpcio's generated base servicers raise it for a method the library behind them
            # does not implement (grpc_health's Health/List): an absent method, not a bug.
            code, text = grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented"
            log.debug("%s: UNIMPLEMENTED", method)
        else:
            log.error("unexpected error in %s", method, exc_info=exc)
            code, text = status_for(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
        self._count_error(method, str(code.name))
        await context.abort(code, text)

    def _unary(self, method: str, message: str, inner: Any, *, streamed: bool = False) -> Any:
        """A handler with one response; ``streamed``: its requests come as a stream."""

        async def behaviour(request: Any, context: Any) -> Any:
            try:
                result = inner(_checked(request, message, streamed), context)
                return await result if inspect.isawaitable(result) else result
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(method, context, exc)

        return behaviour

    def _streaming(self, method: str, message: str, inner: Any, *, streamed: bool = False) -> Any:
        """A handler with a response stream; ``streamed``: its requests come as a stream."""

        async def behaviour(request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in _relay(inner(_checked(request, message, streamed), context)):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(method, context, exc)

        return behaviour

    def _unary_stream(self, method: str, message: str, inner: Any) -> Any:
        return self._streaming(method, message, inner)

    def _stream_unary(self, method: str, message: str, inner: Any) -> Any:
        return self._unary(method, message, inner, streamed=True)

    def _stream_stream(self, method: str, message: str, inner: Any) -> Any:
        return self._streaming(method, message, inner, streamed=True)


def _checked(request: Any, message: str, streamed: bool) -> Any:
    if streamed:
        return _checked_stream(request, message)
    _check_decoded(request, message)
    return request


async def _relay(result: Any) -> AsyncIterator[Any]:
    """What a streaming handler produced, whichever way it produced it."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    elif inspect.isawaitable(result):
        await result  # the handler writes with context.write()
    else:
        for item in result:
            yield item


def _safe_deserializer(deserializer: Callable[[bytes], Any] | None) -> Any:
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # DecodeError, or whatever a custom deserializer raises
            return _Undecodable(f"{type(exc).__name__}: {exc}")

    return deserialize


def _check_decoded(request: Any, message: str) -> None:
    if isinstance(request, _Undecodable):
        raise InvalidRequest(
            f"malformed {message} request: the bytes are not a valid protobuf message of the "
            f"method's type ({request.reason})"
        )


async def _checked_stream(requests: Any, message: str) -> AsyncIterator[Any]:
    async for request in requests:
        _check_decoded(request, message)
        yield request
