"""Just enough of the protobuf wire format to route a KServe-v2 request without decoding tensors.

Protobuf's merge rule makes this small: for a singular field the last occurrence wins, and a map
entry replaces an earlier one with the same key. So the sidecar retargets a request by *appending*
``model_name``, ``model_version`` and parameter entries to the bytes it received, and describes a
response by appending parameter entries to the bytes Triton returned. Reading the routing header
skips over tensor payloads by their length prefix: the cost does not grow with tensor size, and no
tensor is ever copied into Python objects.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as kserve

from flags.schema import Scalar
from sidecar.tensors import InputSpec

_REQ = kserve.ModelInferRequest.DESCRIPTOR.fields_by_name
_RESP = kserve.ModelInferResponse.DESCRIPTOR.fields_by_name
_PARAM = kserve.InferParameter.DESCRIPTOR.fields_by_name
REQUEST_MODEL_NAME = _REQ["model_name"].number
REQUEST_MODEL_VERSION = _REQ["model_version"].number
REQUEST_PARAMETERS = _REQ["parameters"].number
REQUEST_INPUTS = _REQ["inputs"].number
REQUEST_RAW_INPUTS = _REQ["raw_input_contents"].number
RESPONSE_MODEL_VERSION = _RESP["model_version"].number
RESPONSE_PARAMETERS = _RESP["parameters"].number
PARAM_BOOL, PARAM_INT64 = _PARAM["bool_param"].number, _PARAM["int64_param"].number
PARAM_STRING, PARAM_DOUBLE = _PARAM["string_param"].number, _PARAM["double_param"].number

_INPUT_TENSOR = kserve.ModelInferRequest.InferInputTensor
VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _skip(buf: bytes | memoryview, pos: int, wire_type: int) -> tuple[int, int]:
    """Return (start, end) of the value at ``pos``; for LEN, the payload without its prefix."""
    if wire_type == VARINT:
        _, end = read_varint(buf, pos)
        return pos, end
    if wire_type == FIXED64:
        return pos, pos + 8
    if wire_type == FIXED32:
        return pos, pos + 4
    if wire_type == LEN:
        length, start = read_varint(buf, pos)
        return start, start + length
    raise WireError(f"unsupported wire type {wire_type}")


def fields(buf: bytes | memoryview) -> list[tuple[int, int, int, int]]:
    """Top-level (field number, wire type, value start, value end), in order."""
    out = []
    pos, size = 0, len(buf)
    while pos < size:
        key, pos = read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        start, end = _skip(buf, pos, wire_type)
        if end > size:
            raise WireError("field runs past the end of the message")
        out.append((number, wire_type, start, end))
        pos = end
    return out


@dataclass(frozen=True, slots=True)
class RequestHeader:
    """What routing needs from a ModelInferRequest; the tensors are not looked at."""

    model_name: str
    model_version: str
    parameter_keys: frozenset[str]
    string_parameters: Mapping[str, str]
    inputs: tuple[InputSpec, ...]
    raw_input_sizes: tuple[int, ...]


def read_request_header(raw: bytes) -> RequestHeader:
    view = memoryview(raw)
    name = version = ""
    keys: set[str] = set()
    strings: dict[str, str] = {}
    inputs: list[InputSpec] = []
    raw_sizes: list[int] = []
    try:
        for number, wire_type, start, end in fields(view):
            if wire_type != LEN:
                continue
            if number == REQUEST_MODEL_NAME:
                name = str(view[start:end], "utf-8")
            elif number == REQUEST_MODEL_VERSION:
                version = str(view[start:end], "utf-8")
            elif number == REQUEST_PARAMETERS:
                key, value = _map_entry(view[start:end])
                keys.add(key)
                if value is not None:
                    strings[key] = value
            elif number == REQUEST_INPUTS:
                # Input descriptions are small (name, datatype, shape); tensor bytes are elsewhere.
                tensor = _INPUT_TENSOR.FromString(view[start:end])
                inputs.append(InputSpec(tensor.name, tensor.datatype, tuple(tensor.shape)))
            elif number == REQUEST_RAW_INPUTS:
                raw_sizes.append(end - start)  # the length only: the payload is not copied
    except (WireError, UnicodeDecodeError, DecodeError) as exc:
        raise WireError(f"malformed ModelInferRequest: {exc}") from exc
    return RequestHeader(name, version, frozenset(keys), strings, tuple(inputs), tuple(raw_sizes))


def _map_entry(entry: memoryview) -> tuple[str, str | None]:
    """A parameters entry's key, and its value when it is a string_param."""
    key, value = "", None
    for number, wire_type, start, end in fields(entry):
        if number == 1 and wire_type == LEN:
            key = str(entry[start:end], "utf-8")
        elif number == 2 and wire_type == LEN:
            for inner, inner_type, s, e in fields(entry[start:end]):
                if inner == PARAM_STRING and inner_type == LEN:
                    value = str(entry[start:end][s:e], "utf-8")
    return key, value


def read_response_version(raw: bytes) -> str:
    version = ""
    view = memoryview(raw)
    for number, wire_type, start, end in fields(view):
        if number == RESPONSE_MODEL_VERSION and wire_type == LEN:
            version = str(view[start:end], "utf-8")
    return version


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> two's complement, as protobuf does
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | LEN) + _varint(len(payload)) + payload


def string_field(number: int, text: str) -> bytes:
    return _len_field(number, text.encode())


def _parameter(value: Scalar) -> bytes:
    if isinstance(value, bool):
        return _varint(PARAM_BOOL << 3 | VARINT) + _varint(int(value))
    if isinstance(value, int):
        return _varint(PARAM_INT64 << 3 | VARINT) + _varint(value)
    if isinstance(value, float):
        return _varint(PARAM_DOUBLE << 3 | FIXED64) + struct.pack("<d", value)
    return _len_field(PARAM_STRING, str(value).encode())


def parameter_entries(number: int, parameters: Mapping[str, Scalar]) -> bytes:
    """Map entries for field ``number`` (``parameters`` of a request or response)."""
    return b"".join(
        _len_field(number, string_field(1, key) + _len_field(2, _parameter(value)))
        for key, value in parameters.items()
    )


def retarget(
    model: str, version: str, parameters: Mapping[str, Scalar], keep: frozenset[str]
) -> bytes:
    """Bytes to append to a request so it goes to ``model``/``version`` with the variant's
    parameters; parameters whose key is in ``keep`` (set by the caller) are not overridden."""
    extra = {k: v for k, v in parameters.items() if k not in keep}
    return (
        string_field(REQUEST_MODEL_NAME, model)
        + string_field(REQUEST_MODEL_VERSION, version)
        + parameter_entries(REQUEST_PARAMETERS, extra)
    )
