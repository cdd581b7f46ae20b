"""Cheap checks on KServe-v2 tensors before they reach a backend (no payload decoding)."""

from __future__ import annotations

import math

from tritonclient.grpc import service_pb2 as kserve

from sidecar.errors import InvalidRequest

DTYPE_BYTES = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "BF16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
}  # BYTES is variable-length: the backend checks it


def check_inputs(request: kserve.ModelInferRequest, *, max_elements: int) -> None:
    """Raise InvalidRequest for a request no backend could run, saying what to fix."""
    if not request.inputs:
        raise InvalidRequest("the request has no input tensors")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(
            f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents; send one per input"
        )
    for index, tensor in enumerate(request.inputs):
        if any(d < 0 for d in tensor.shape):
            raise InvalidRequest(
                f"input {tensor.name!r}: shape {list(tensor.shape)} has a negative dimension"
            )
        elements = math.prod(tensor.shape)
        if elements > max_elements:
            raise InvalidRequest(
                f"input {tensor.name!r}: {elements} elements exceed the limit of {max_elements}"
            )
        size = DTYPE_BYTES.get(tensor.datatype)
        if tensor.datatype != "BYTES" and size is None:
            raise InvalidRequest(f"input {tensor.name!r}: unknown datatype {tensor.datatype!r}")
        if raw and size is not None and len(raw[index]) != elements * size:
            raise InvalidRequest(
                f"input {tensor.name!r}: {len(raw[index])} bytes of data, but shape "
                f"{list(tensor.shape)} of {tensor.datatype} needs {elements * size}"
            )
