"""Cheap checks on KServe-v2 tensors before they reach a backend (no payload decoding).

They need only each input's name, datatype and shape and the byte length of its raw contents,
which the raw pass-through reads off the wire without copying (see :mod:`sidecar.wire`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
MAX_TENSOR_ELEMENTS = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class InputSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


def check_inputs(
    inputs: Sequence[InputSpec],
    raw_sizes: Sequence[int],
    *,
    max_elements: int = MAX_TENSOR_ELEMENTS,
) -> None:
    """Raise InvalidRequest for a request no backend could run, saying what to fix."""
    if not inputs:
        raise InvalidRequest("the request has no input tensors")
    if raw_sizes and len(raw_sizes) != len(inputs):
        raise InvalidRequest(
            f"{len(inputs)} inputs but {len(raw_sizes)} raw_input_contents; send one per input"
        )
    for index, tensor in enumerate(inputs):
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
        if raw_sizes and size is not None and raw_sizes[index] != elements * size:
            raise InvalidRequest(
                f"input {tensor.name!r}: {raw_sizes[index]} bytes of data, but shape "
                f"{list(tensor.shape)} of {tensor.datatype} needs {elements * size}"
            )


def check_message(
    request: kserve.ModelInferRequest, *, max_elements: int = MAX_TENSOR_ELEMENTS
) -> None:
    """check_inputs for a parsed ModelInferRequest."""
    check_inputs(
        [InputSpec(t.name, t.datatype, tuple(t.shape)) for t in request.inputs],
        [len(raw) for raw in request.raw_input_contents],
        max_elements=max_elements,
    )
