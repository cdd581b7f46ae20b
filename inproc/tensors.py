"""Tensors in and out: an app's numpy arrays (or tritonclient ``InferInput`` objects) as a
KServe-v2 ``ModelInferRequest``, and the response's outputs as numpy arrays.

The one module of this package that knows tritonclient's types and helpers. Bad input becomes an
:class:`~inproc.errors.InvalidInput` that says what to fix, before anything is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import InferInput
from tritonclient.grpc import service_pb2 as kserve
from tritonclient.utils import (
    deserialize_bf16_tensor,
    deserialize_bytes_tensor,
    np_to_triton_dtype,
    serialize_byte_tensor,
    triton_to_np_dtype,
)

from flags.schema import Scalar
from inproc.errors import InvalidInput
from sidecar.calls import set_parameter

Array = npt.NDArray[Any]
Inputs = Mapping[str, Array] | Sequence[InferInput]

# The numeric datatypes both ways, looked up per tensor (tritonclient's helpers are if-chains).
_NUMERIC = ("BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
            "FP16", "FP32", "FP64")  # fmt: skip
_NUMPY: dict[str, Any] = {t: np.dtype(triton_to_np_dtype(t)) for t in _NUMERIC}
_DATATYPES: dict[np.dtype[Any], str] = {dtype: t for t, dtype in _NUMPY.items()}


def build_request(
    model: str,
    inputs: Inputs,
    *,
    version: str = "",
    outputs: Sequence[str] = (),
    parameters: Mapping[str, Scalar] | None = None,
) -> kserve.ModelInferRequest:
    """The request Triton gets (before the router sets the cohort's model and version)."""
    if not isinstance(model, str) or not model:
        raise InvalidInput(f"model must be a non-empty string, not {model!r}")
    request = kserve.ModelInferRequest(model_name=model, model_version=version)
    if isinstance(inputs, Mapping):
        for name, array in inputs.items():
            _add_array(request, name, array)
    elif isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)):
        for item in inputs:
            _add_infer_input(request, item)
    else:
        raise InvalidInput(
            f"inputs must be a dict of name -> numpy array or a list of tritonclient InferInput, "
            f"not {type(inputs).__name__}"
        )
    if not request.inputs:
        raise InvalidInput(f"no inputs for model {model!r}")
    for name in outputs:
        request.outputs.add(name=name)
    for key, value in (parameters or {}).items():
        if not isinstance(value, (str, bool, int, float)):
            raise InvalidInput(
                f"parameter {key!r} is a {type(value).__name__}; use str, bool, int or float"
            )
        set_parameter(request.parameters[key], value)
    return request


def _add_array(request: kserve.ModelInferRequest, name: str, array: Any) -> None:
    if not isinstance(array, np.ndarray):
        raise InvalidInput(
            f"input {name!r} is a {type(array).__name__}; pass a numpy array (np.asarray(...))"
        )
    datatype = _DATATYPES.get(array.dtype)
    if datatype is None:
        if array.dtype.byteorder == ">":  # KServe raw contents are little-endian
            array = array.astype(array.dtype.newbyteorder("<"))
        datatype = _DATATYPES.get(array.dtype) or np_to_triton_dtype(array.dtype)
        if datatype is None:
            raise InvalidInput(
                f"input {name!r} has numpy dtype {array.dtype}, which KServe-v2 has no datatype "
                "for; convert it (e.g. .astype(np.float32))"
            )
    if datatype == "BYTES":
        raw = serialize_byte_tensor(array)
        content = b"" if raw is None else raw.item()
    else:
        content = array.tobytes()  # C order whatever the array's layout
    request.inputs.add(name=name, datatype=datatype, shape=array.shape)
    request.raw_input_contents.append(content)


def _add_infer_input(request: kserve.ModelInferRequest, item: Any) -> None:
    if not isinstance(item, InferInput):
        raise InvalidInput(
            f"inputs hold a {type(item).__name__}; pass tritonclient.grpc.InferInput objects "
            "or a dict of name -> numpy array"
        )
    content = item._get_content()
    if content is None:
        raise InvalidInput(
            f"input {item.name()!r} has no data: call set_data_from_numpy() (shared-memory "
            "inputs are not supported in-process)"
        )
    request.inputs.append(item._get_tensor())
    request.raw_input_contents.append(content)


def decode_outputs(response: kserve.ModelInferResponse) -> dict[str, Array]:
    """Every output of ``response`` as a numpy array of its shape. Raises ValueError when the
    bytes do not fit the shape and datatype (a backend bug, not the caller's)."""
    raws = response.raw_output_contents
    decoded: dict[str, Array] = {}
    for index, output in enumerate(response.outputs):
        shape = output.shape
        if index < len(raws):
            if output.datatype == "BYTES":
                array = deserialize_bytes_tensor(raws[index])
            elif output.datatype == "BF16":  # numpy has no bfloat16: widened to float32
                array = deserialize_bf16_tensor(raws[index])
            else:
                dtype = _NUMPY.get(output.datatype) or triton_to_np_dtype(output.datatype)
                array = np.frombuffer(raws[index], dtype=dtype)
        elif output.contents.bytes_contents:
            array = np.array(list(output.contents.bytes_contents), dtype=np.object_)
        else:
            array = np.empty(0)
        decoded[output.name] = array.reshape(shape)
    return decoded
