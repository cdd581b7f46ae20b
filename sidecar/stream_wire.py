"""The wire format of ``ModelStreamInferResponse``, just enough to relay it without parsing.

A stream response is ``{error_message: string = 1, infer_response: ModelInferResponse = 2}``.
The sidecar reads only its top-level framing (is there an error? is there an infer_response?)
and tells the caller its assignment by *appending* one more ``infer_response`` field that holds
only the assignment parameters: protobuf merges repeated occurrences of a singular message field,
so the caller's parser sees Triton's response with the parameters added (the same rule the unary
path uses, :mod:`sidecar.wire`). Tensors are never decoded or copied into Python objects.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from tritonclient.grpc import service_pb2 as kserve

from sidecar import protowire, render, wire
from sidecar.outcome import Assignment

_FIELDS = kserve.ModelStreamInferResponse.DESCRIPTOR.fields_by_name
ERROR_MESSAGE = _FIELDS["error_message"].number
INFER_RESPONSE = _FIELDS["infer_response"].number


class StreamResponse(NamedTuple):
    """What the relay needs to know about one stream response."""

    error_message: str  # "" when the response is not an error
    has_infer_response: bool


def read_stream_response(raw: bytes) -> StreamResponse:
    """The top-level fields of a serialized ModelStreamInferResponse (the last error wins, as
    the parser's would). Raises :class:`sidecar.wire.WireError` for bytes that are not one."""
    error = ""
    has_response = False
    view = memoryview(raw)
    try:
        for number, wire_type, _, start, end in protowire.fields(view):
            if wire_type != protowire.LEN:
                continue
            if number == ERROR_MESSAGE:
                error = str(view[start:end], "utf-8")
            elif number == INFER_RESPONSE:
                has_response = True
    except (protowire.FramingError, UnicodeDecodeError) as exc:
        raise wire.WireError(f"malformed ModelStreamInferResponse: {exc}") from exc
    return StreamResponse(error, has_response)


def served_version(raw: bytes) -> str:
    """``infer_response.model_version`` of a stream response (read once per stream, and only
    when the backend chose the version)."""
    return str(kserve.ModelStreamInferResponse.FromString(raw).infer_response.model_version)


def response_suffix(assignment: Assignment) -> bytes:
    """Bytes to append to a stream response that has an ``infer_response``: the assignment
    parameters of :func:`sidecar.render.response_parameters`, inside that response."""
    return _wrapped(render.response_suffix(assignment))


@functools.lru_cache(maxsize=4096)
def _wrapped(parameters: bytes) -> bytes:
    return _varint(INFER_RESPONSE << 3 | protowire.LEN) + _varint(len(parameters)) + parameters


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
