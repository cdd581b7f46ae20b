"""Just enough of the protobuf wire format to route a KServe-v2 request without decoding tensors.

Protobuf's merge rule makes this small: for a singular field the last occurrence wins, and a map
entry replaces an earlier one with the same key. So the sidecar retargets a request by *appending*
``model_name``, ``model_version`` and parameter entries to the bytes it received, and describes a
response by appending parameter entries to the bytes Triton returned.

Reading the routing header must never disagree with the real parser: bytes it accepted go to
Triton as they are, and a request Triton cannot parse would be blamed on the backend (INTERNAL,
fallback, a circuit opened for everyone) instead of on its sender. So :func:`read_request_header`
walks only the top-level framing (:mod:`sidecar.protowire`, exactly as strict as upb), cuts out the
``raw_input_contents`` fields, the only large ones, and hands everything else to
``ModelInferRequest.FromString``; the header is read from that parsed message. The cost does not
grow with tensor size, and no tensor is ever copied into Python objects.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as kserve

from flags.schema import Scalar
from sidecar import protowire
from sidecar.protowire import FIXED32 as FIXED32  # re-exported: the wire types callers use
from sidecar.protowire import FIXED64 as FIXED64
from sidecar.protowire import LEN as LEN
from sidecar.protowire import VARINT as VARINT
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


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


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
    """The routing header of a serialized ModelInferRequest.

    Raises :class:`WireError` exactly when ``ModelInferRequest.FromString(raw)`` would raise.
    """
    try:
        rest, raw_sizes = _without_raw_inputs(memoryview(raw))
        request = kserve.ModelInferRequest.FromString(rest)
    except protowire.FramingError as exc:
        raise WireError(f"malformed ModelInferRequest: {exc}") from exc
    except DecodeError as exc:
        # upb's message names the type and the problem ("String field had bad UTF-8").
        raise WireError(f"malformed ModelInferRequest: {_reason(exc)}") from exc
    parameters = request.parameters
    strings = (
        {
            key: value.string_param
            for key, value in parameters.items()
            if value.WhichOneof("parameter_choice") == "string_param"
        }
        if parameters
        else {}
    )
    return RequestHeader(
        request.model_name,
        request.model_version,
        frozenset(parameters),
        strings,
        tuple([InputSpec(t.name, t.datatype, tuple(t.shape)) for t in request.inputs]),
        raw_sizes,
    )


def _without_raw_inputs(view: memoryview) -> tuple[bytes | memoryview, tuple[int, ...]]:
    """The message without its ``raw_input_contents`` fields, and their payload sizes.

    Cutting out whole, well-framed top-level fields cannot make the rest more or less valid, so
    parsing the rest is exactly as strict as parsing everything. Clients put the tensors last,
    so the rest is usually one prefix: a view of it, not a copy.
    """
    kept: list[memoryview] = []
    sizes: list[int] = []
    keep_from = 0
    for number, wire_type, tag_start, start, end in protowire.fields(view):
        if number == REQUEST_RAW_INPUTS and wire_type == LEN:
            if tag_start > keep_from:
                kept.append(view[keep_from:tag_start])
            keep_from = end
            sizes.append(end - start)
    if keep_from < len(view):
        kept.append(view[keep_from:])
    if len(kept) == 1:
        return kept[0], tuple(sizes)
    return b"".join(kept), tuple(sizes)


def _reason(exc: DecodeError) -> str:
    """upb's "Error parsing message with type '...': <reason>" without the preamble."""
    text = str(exc)
    return text.rsplit(": ", 1)[-1] if ": " in text else text or "not a protobuf message"


def read_response_version(raw: bytes) -> str:
    """``model_version`` of a serialized ModelInferResponse (the last one, as the parser would)."""
    version = ""
    view = memoryview(raw)
    try:
        for number, wire_type, _, start, end in protowire.fields(view):
            if number == RESPONSE_MODEL_VERSION and wire_type == LEN:
                version = str(view[start:end], "utf-8")
    except (protowire.FramingError, UnicodeDecodeError) as exc:
        raise WireError(f"malformed ModelInferResponse: {exc}") from exc
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
