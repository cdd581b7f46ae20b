"""Triton's model-repository layout, read the way Triton reads it: ``<model>/config.pbtxt``
(parsed with the ``model_config_pb2`` that tritonclient ships), ``<model>/<version>/model.onnx``,
and the config's ``version_policy``. Shared by the embedded engine's codec and sessions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from sidecar.backends.base import BackendError, ErrorKind

ENGINE = "onnxruntime"
ONNX_PLATFORMS = frozenset({"onnxruntime_onnx"})
DEFAULT_MODEL_FILENAME = "model.onnx"

Array = npt.NDArray[Any]
Tensors = dict[str, Array]


@dataclass(frozen=True)
class _DType:
    """One config data type in the three spellings a request can use."""

    kserve: str  # KServe-v2 datatype string, as in ModelInferRequest.InferInputTensor.datatype
    numpy: np.dtype[Any]
    contents_field: str | None  # InferTensorContents field for typed (non-raw) data


def _dt(kserve_name: str, numpy_name: str, contents_field: str | None) -> _DType:
    # Little-endian explicitly: raw tensor bytes on the wire are little-endian by spec.
    return _DType(kserve_name, np.dtype(numpy_name).newbyteorder("<"), contents_field)


DTYPES: Mapping[int, _DType] = {
    mc.TYPE_BOOL: _dt("BOOL", "bool", "bool_contents"),
    mc.TYPE_UINT8: _dt("UINT8", "uint8", "uint_contents"),
    mc.TYPE_UINT16: _dt("UINT16", "uint16", "uint_contents"),
    mc.TYPE_UINT32: _dt("UINT32", "uint32", "uint_contents"),
    mc.TYPE_UINT64: _dt("UINT64", "uint64", "uint64_contents"),
    mc.TYPE_INT8: _dt("INT8", "int8", "int_contents"),
    mc.TYPE_INT16: _dt("INT16", "int16", "int_contents"),
    mc.TYPE_INT32: _dt("INT32", "int32", "int_contents"),
    mc.TYPE_INT64: _dt("INT64", "int64", "int64_contents"),
    mc.TYPE_FP16: _dt("FP16", "float16", None),  # KServe-v2 has no typed FP16 field
    mc.TYPE_FP32: _dt("FP32", "float32", "fp32_contents"),
    mc.TYPE_FP64: _dt("FP64", "float64", "fp64_contents"),
}


def engine_error(kind: ErrorKind, message: str) -> BackendError:
    return BackendError(kind, message, backend=ENGINE)


def load_model_config(model_dir: Path) -> Any:
    """Parse ``<model_dir>/config.pbtxt`` into tritonclient's ``ModelConfig`` message."""
    config = mc.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(), config)
    if not config.name:
        config.name = model_dir.name  # Triton fills the name from the directory the same way
    if config.name != model_dir.name:
        raise ValueError(f"config name {config.name!r} differs from directory {model_dir.name!r}")
    return config


def unsupported_reason(config: Any) -> str | None:
    """Why this engine cannot serve ``config``, or None if it can."""
    if config.platform not in ONNX_PLATFORMS and config.backend != "onnxruntime":
        return f"platform {config.platform or config.backend!r} is not ONNX"
    for tensor in (*config.input, *config.output):
        if tensor.data_type not in DTYPES:
            return (
                f"tensor {tensor.name!r} has unsupported type {mc.DataType.Name(tensor.data_type)}"
            )
    return None


def resolve_versions(config: Any, model_dir: Path) -> list[int]:
    """The versions to load, per ``version_policy`` (Triton's default: the latest one).

    A ``specific`` policy returns every version it lists, present on disk or not: a listed version
    without its model file is one the loader reports as failed, as Triton does, rather than a
    reason to refuse the whole model.
    """
    filename = model_filename(config)
    on_disk = sorted(
        int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / filename).is_file()
    )
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return on_disk
    if which == "specific":
        return sorted(set(policy.specific.versions))
    count = policy.latest.num_versions if which == "latest" else 1
    return on_disk[-count:] if count > 0 else []


def model_filename(config: Any) -> str:
    """The file each ``<version>/`` folder holds: ``default_model_filename`` or model.onnx."""
    return str(config.default_model_filename or DEFAULT_MODEL_FILENAME)
