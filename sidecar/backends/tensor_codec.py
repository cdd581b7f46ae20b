"""Requests in, responses out: KServe-v2 tensors checked against a model's config, decoded to
numpy for onnxruntime, and its outputs encoded back. A caller's mistake becomes an
INVALID_ARGUMENT that says what to fix, before anything runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as kserve

from sidecar.backends.base import ErrorKind
from sidecar.backends.model_repository import DTYPES, Array, Tensors
from sidecar.backends.model_repository import engine_error as _error


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def expected_shape(config: Any, tensor: Any) -> list[int]:
    """Full shape the config allows, -1 for any size (the batch dimension included)."""
    dims = list(tensor.dims)
    return [-1, *dims] if config.max_batch_size > 0 else dims


def check_shape(config: Any, tensor: Any, shape: Sequence[int]) -> None:
    expected = expected_shape(config, tensor)
    fits = len(shape) == len(expected) and all(
        e in (-1, s) and s >= 0 for e, s in zip(expected, shape, strict=True)
    )
    if not fits:
        raise _error(
            ErrorKind.INVALID_ARGUMENT,
            f"input {tensor.name!r} has shape {_shape_text(shape)}; model {config.name!r} expects "
            f"{_shape_text(expected)} (-1 = any size)",
        )
    if config.max_batch_size > 0 and not 1 <= shape[0] <= config.max_batch_size:
        raise _error(
            ErrorKind.INVALID_ARGUMENT,
            f"input {tensor.name!r} has batch size {shape[0]}; model {config.name!r} accepts "
            f"1 to {config.max_batch_size} (max_batch_size); split the request",
        )


def decode_input(config: Any, tensor: Any, request_input: Any, raw: bytes | None) -> Array:
    """One request input as a numpy array, after checking datatype, shape and size."""
    dtype = DTYPES[tensor.data_type]
    name = request_input.name
    if request_input.datatype != dtype.kserve:
        raise _error(
            ErrorKind.INVALID_ARGUMENT,
            f"input {name!r} has datatype {request_input.datatype!r}; model {config.name!r} "
            f"expects {dtype.kserve!r}",
        )
    shape = list(request_input.shape)
    check_shape(config, tensor, shape)
    count = math.prod(shape)
    if raw is not None:
        want = count * dtype.numpy.itemsize
        if len(raw) != want:
            raise _error(
                ErrorKind.INVALID_ARGUMENT,
                f"input {name!r} has {len(raw)} raw bytes; shape {_shape_text(shape)} of "
                f"{dtype.kserve} needs {want} ({count} x {dtype.numpy.itemsize} bytes)",
            )
        return np.frombuffer(raw, dtype=dtype.numpy).reshape(shape)
    values = getattr(request_input.contents, dtype.contents_field) if dtype.contents_field else []
    if len(values) != count:
        raise _error(
            ErrorKind.INVALID_ARGUMENT,
            f"input {name!r} has {len(values)} values in contents.{dtype.contents_field}; shape "
            f"{_shape_text(shape)} needs {count} (or send it in raw_input_contents)",
        )
    return np.asarray(values, dtype=dtype.numpy).reshape(shape)


def decode_inputs(config: Any, request: Any) -> Tensors:
    """All inputs of ``request``, keyed by name; every config input present exactly once."""
    declared = {t.name: t for t in config.input}
    raws: Sequence[bytes] = request.raw_input_contents
    if raws and len(raws) != len(request.inputs):
        raise _error(
            ErrorKind.INVALID_ARGUMENT,
            f"{len(raws)} raw_input_contents for {len(request.inputs)} inputs; when raw contents "
            "are used, every input needs exactly one, in input order",
        )
    feeds: Tensors = {}
    for i, request_input in enumerate(request.inputs):
        tensor = declared.get(request_input.name)
        if tensor is None:
            raise _error(
                ErrorKind.INVALID_ARGUMENT,
                f"unknown input {request_input.name!r} for model {config.name!r}; "
                f"expected {sorted(declared)}",
            )
        if request_input.name in feeds:
            raise _error(ErrorKind.INVALID_ARGUMENT, f"input {request_input.name!r} sent twice")
        feeds[request_input.name] = decode_input(
            config, tensor, request_input, raws[i] if raws else None
        )
    missing = sorted(set(declared) - set(feeds) - {t.name for t in config.input if t.optional})
    if missing:
        raise _error(
            ErrorKind.INVALID_ARGUMENT,
            f"missing input(s) {missing} for model {config.name!r}; expected {sorted(declared)}",
        )
    return feeds


def requested_outputs(config: Any, request: Any) -> list[str]:
    """Output names to return: the request's subset, or every output the config declares."""
    declared = [t.name for t in config.output]
    names = [o.name for o in request.outputs]
    unknown = sorted(set(names) - set(declared))
    if unknown:
        raise _error(
            ErrorKind.INVALID_ARGUMENT,
            f"unknown output(s) {unknown} requested from model {config.name!r}; "
            f"available: {declared}",
        )
    return names or declared


def batchable(config: Any) -> bool:
    """Requests concatenate along the batch axis only if the rest of every shape is fixed."""
    return config.max_batch_size > 0 and all(
        not t.optional and -1 not in t.dims for t in config.input
    )


def batch_rows(config: Any, feeds: Tensors) -> int:
    """Batch size of validated inputs; all inputs must agree for the batch to split back."""
    rows: set[int] = {int(array.shape[0]) for array in feeds.values()}
    if len(rows) > 1:
        raise _error(ErrorKind.INVALID_ARGUMENT, f"inputs disagree on batch size: {sorted(rows)}")
    return rows.pop()


def encode_response(
    request: Any, config: Any, version: int, outputs: Tensors, names: list[str]
) -> kserve.ModelInferResponse:
    declared = {t.name: DTYPES[t.data_type] for t in config.output}
    response = kserve.ModelInferResponse(
        model_name=config.name, model_version=str(version), id=request.id
    )
    for name in names:
        dtype = declared[name]
        array = np.ascontiguousarray(outputs[name], dtype=dtype.numpy)
        response.outputs.add(name=name, datatype=dtype.kserve, shape=list(array.shape))
        response.raw_output_contents.append(array.tobytes())
    return response
