"""One ``ModelStreamInfer`` call to Triton: the bidirectional stream of decoupled models.

Bytes in, bytes out, on the backend's existing ``grpc.aio`` channel
(``channel.stream_stream('/inference.GRPCInferenceService/ModelStreamInfer')``): requests are
forwarded as the serialized ``ModelInferRequest`` the sidecar retargeted, responses come back as
the serialized ``ModelStreamInferResponse`` Triton sent, and no tensor is parsed either way.

Errors are translated here and nowhere else. A stream fails in two ways: the call ends with an
error status (Triton unreachable, killed mid-stream, the deadline passed), translated like a unary
call's; or Triton answers one request with a response whose ``error_message`` is set and keeps the
stream open (an unknown model or version, a model that raised, a malformed request). That second
kind carries no status code, so the wording decides the kind (:func:`stream_error`).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]

from sidecar.backends.base import BackendError, ErrorKind
from sidecar.backends.triton import _NOT_FOUND_TEXT, ENGINE, _classify

# Triton's wording for a request it refused as malformed (in unary calls: INVALID_ARGUMENT). It
# must not count against a version: the default version would refuse it just the same.
_CALLER_TEXT = re.compile(
    r"unable to parse|failed to parse|expected \d+ inputs? but got|unexpected (?:inference input|"
    r"datatype|shape|explicit tensor|additional input)|byte size mismatch|"
    r"unexpected input",
    re.I,
)


class TritonStream:
    """:class:`~sidecar.backends.base.BackendStream` over one grpc.aio stream-stream call."""

    __slots__ = ("_abandoned", "_call", "_timeout", "_url", "_what")

    def __init__(self, call: Any, *, url: str, what: str, timeout: float | None) -> None:
        self._call = call
        self._url = url
        self._what = what
        self._timeout = timeout
        self._abandoned = False

    async def write(self, request: bytes) -> None:
        try:
            await self._call.write(request)
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc) from exc
        except asyncio.InvalidStateError as exc:  # the call already ended (OK, or cancelled)
            raise self._ended() from exc
        except asyncio.CancelledError:
            if self._task_cancelled():
                raise
            raise self._ended() from None

    async def done_writing(self) -> None:
        try:
            await self._call.done_writing()
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc) from exc
        except asyncio.InvalidStateError:
            return  # already ended: nothing left to close
        except asyncio.CancelledError:
            if self._task_cancelled():
                raise
            raise self._ended() from None

    async def read(self) -> bytes | None:
        try:
            raw = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc) from exc
        except asyncio.CancelledError:
            if self._task_cancelled():
                raise
            raise self._ended() from None
        if raw is grpc.aio.EOF:
            code = await self._call.code()
            if code != grpc.StatusCode.OK:  # some grpc releases report the status here
                details = await self._call.details()
                raise _translated(code, details or code.name, self._url, self._what, self._timeout)
            return None
        return bytes(raw)

    def cancel(self) -> None:
        self._abandoned = True
        self._call.cancel()

    def _ended(self) -> BackendError:
        return BackendError(
            ErrorKind.UNAVAILABLE,
            f"the stream to Triton at {self._url} for {self._what} has ended",
            backend=ENGINE,
        )

    def _task_cancelled(self) -> bool:
        """grpc.aio raises CancelledError from a call cancelled by :meth:`cancel`: that is the
        call's end, not this task's cancellation (which must go on propagating)."""
        task = asyncio.current_task()
        return not self._abandoned or (task is not None and task.cancelling() > 0)

    def error_of(self, message: str) -> BackendError:
        return stream_error(message, url=self._url, what=self._what)

    def _translate(self, exc: grpc.aio.AioRpcError) -> BackendError:
        code = exc.code()
        return _translated(code, exc.details() or code.name, self._url, self._what, self._timeout)


def _translated(
    code: grpc.StatusCode, details: str, url: str, what: str, timeout: float | None
) -> BackendError:
    kind, message = _classify(code, details, url=url, what=what, timeout=timeout)
    return BackendError(kind, message, backend=ENGINE)


def stream_error(message: str, *, url: str, what: str) -> BackendError:
    """A stream response's ``error_message`` as a BackendError: NOT_FOUND for an unknown model
    or version, INVALID_ARGUMENT for a request Triton refused as malformed, else INTERNAL (the
    model failed). Triton's own words are kept in the message."""
    if _NOT_FOUND_TEXT.search(message):
        kind, text = ErrorKind.NOT_FOUND, f"{what} is not available on Triton at {url}"
    elif _CALLER_TEXT.search(message):
        kind, text = ErrorKind.INVALID_ARGUMENT, f"Triton rejected a stream request for {what}"
    else:
        kind, text = ErrorKind.INTERNAL, f"Triton at {url} failed on {what}"
    return BackendError(kind, f"{text}: {message}", backend=ENGINE)
