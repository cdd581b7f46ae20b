"""Model answers as numpy arrays, and how two answers to the same request are compared.

Pure functions over values: used off the request path by shadow traffic (:mod:`sidecar.shadow`)
and by the golden-set gate (:mod:`rollout.golden`). A KServe-v2 response carries its outputs
either as ``raw_output_contents`` (what Triton and the embedded engine send) or as typed
``contents``; both decode here, without copying raw bytes (``np.frombuffer``).

Comparison modes (``shadow.compare`` in the flag):

- ``label``: the answers agree when their label outputs are equal (integer, boolean or BYTES
  tensors: a class id, a token, a string);
- ``argmax``: when the arg-max over the last axis of a score output is equal (classifiers that
  return only scores or logits);
- ``max_abs_diff``: when the largest absolute difference of the float outputs is within the
  tolerance (regressions, embeddings);
- ``auto`` (the default): ``label`` on the named output or on every non-float output when there
  is one (the digits model's ``label``), else ``argmax`` for a named float output, else
  ``max_abs_diff``.

The largest absolute difference of the float outputs is measured whatever the mode (exported as a
metric). Answers whose outputs do not line up (different names, shapes or types) are
``incomparable``: counted as a disagreement by the shadow gate, since nobody could say they agree.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import service_pb2 as kserve

Array = npt.NDArray[Any]
Outputs = Mapping[str, Array]

# KServe-v2 datatype → (numpy dtype, typed contents field). BYTES is length-prefixed, see below.
_NUMERIC: Mapping[str, tuple[np.dtype[Any], str | None]] = {
    "BOOL": (np.dtype("bool"), "bool_contents"),
    "UINT8": (np.dtype("<u1"), "uint_contents"),
    "UINT16": (np.dtype("<u2"), "uint_contents"),
    "UINT32": (np.dtype("<u4"), "uint_contents"),
    "UINT64": (np.dtype("<u8"), "uint64_contents"),
    "INT8": (np.dtype("<i1"), "int_contents"),
    "INT16": (np.dtype("<i2"), "int_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "FP16": (np.dtype("<f2"), None),
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
}
NUMPY_TO_KSERVE: Mapping[np.dtype[Any], str] = {d: name for name, (d, _) in _NUMERIC.items()}


class AnswerError(ValueError):
    """A response that cannot be decoded into arrays (a bug or a corrupt reply); says why."""


class Verdict(enum.StrEnum):
    AGREE = "agree"
    DISAGREE = "disagree"
    INCOMPARABLE = "incomparable"  # outputs do not line up: names, shapes or types differ


class CompareMode(enum.StrEnum):
    AUTO = "auto"
    LABEL = "label"
    ARGMAX = "argmax"
    MAX_ABS_DIFF = "max_abs_diff"


@dataclass(frozen=True, slots=True)
class Comparison:
    verdict: Verdict
    max_abs_diff: float | None  # over the float outputs both answers have; None without any
    basis: str  # what was compared, for logs: "label(label)", "argmax(scores)", ...


def decode_response(response: kserve.ModelInferResponse | bytes) -> dict[str, Array]:
    """Every output of a KServe-v2 response as an array of its declared shape."""
    if isinstance(response, bytes | bytearray | memoryview):
        try:
            response = kserve.ModelInferResponse.FromString(bytes(response))
        except Exception as exc:  # protobuf's DecodeError and friends
            raise AnswerError(f"unparsable ModelInferResponse: {exc}") from exc
    raw = list(response.raw_output_contents)
    if raw and len(raw) != len(response.outputs):
        raise AnswerError(f"{len(response.outputs)} outputs but {len(raw)} raw output contents")
    decoded: dict[str, Array] = {}
    for index, output in enumerate(response.outputs):
        shape = [int(d) for d in output.shape]
        decoded[output.name] = _decode_output(output, raw[index] if raw else None, shape)
    return decoded


def _decode_output(output: Any, raw: bytes | None, shape: list[int]) -> Array:
    count = int(np.prod(shape)) if shape else 1
    if output.datatype == "BYTES":
        items = _split_bytes(raw) if raw is not None else list(output.contents.bytes_contents)
        values: Array = np.array(items, dtype=object)
    elif output.datatype in _NUMERIC:
        dtype, field = _NUMERIC[output.datatype]
        if raw is not None:
            if len(raw) != count * dtype.itemsize:
                raise AnswerError(
                    f"output {output.name!r}: {len(raw)} bytes for shape {shape} of "
                    f"{output.datatype}"
                )
            values = np.frombuffer(raw, dtype=dtype)
        elif field is not None:
            values = np.asarray(getattr(output.contents, field), dtype=dtype)
        else:
            raise AnswerError(f"output {output.name!r}: {output.datatype} without raw contents")
    else:
        raise AnswerError(f"output {output.name!r}: unknown datatype {output.datatype!r}")
    if values.size != count:
        raise AnswerError(f"output {output.name!r}: {values.size} values for shape {shape}")
    return values.reshape(shape)


def _split_bytes(raw: bytes) -> list[bytes]:
    """KServe-v2 raw BYTES: each element is a 4-byte little-endian length, then the bytes."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise AnswerError("truncated BYTES tensor")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise AnswerError("truncated BYTES tensor")
        items.append(raw[offset : offset + size])
        offset += size
    return items


def _is_float(array: Array) -> bool:
    return array.dtype.kind == "f"


def max_abs_diff(served: Outputs, shadow: Outputs) -> float | None:
    """The largest |a - b| over the float outputs both have with the same shape (NaN: inf)."""
    worst: float | None = None
    for name, a in served.items():
        b = shadow.get(name)
        if b is None or not (_is_float(a) and _is_float(b)) or a.shape != b.shape or a.size == 0:
            continue
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        value = float("inf") if np.isnan(diff).any() else float(diff.max())
        worst = value if worst is None else max(worst, value)
    return worst


def compare_answers(
    served: Outputs,
    shadow: Outputs,
    *,
    mode: CompareMode | str = CompareMode.AUTO,
    output: str | None = None,
    tolerance: float = 1e-4,
) -> Comparison:
    """Do two answers to one request agree? (See the module docstring for the modes.)"""
    diff = max_abs_diff(served, shadow)
    names = [output] if output is not None else sorted(set(served) & set(shadow))
    if not names or any(n not in served or n not in shadow for n in names):
        return Comparison(
            Verdict.INCOMPARABLE, diff, f"outputs {sorted(served)} vs {sorted(shadow)}"
        )
    if any(served[n].shape != shadow[n].shape for n in names):
        return Comparison(Verdict.INCOMPARABLE, diff, "output shapes differ")
    chosen = CompareMode(mode)
    if chosen is CompareMode.AUTO:
        chosen, names = _auto(served, names, output)
    if chosen is CompareMode.LABEL:
        agree = all(np.array_equal(served[n], shadow[n]) for n in names)
    elif chosen is CompareMode.ARGMAX:
        if any(served[n].ndim == 0 or served[n].shape[-1] == 0 for n in names):
            return Comparison(Verdict.INCOMPARABLE, diff, "argmax of an empty axis")
        agree = all(
            np.array_equal(np.argmax(served[n], axis=-1), np.argmax(shadow[n], axis=-1))
            for n in names
        )
    else:
        floats = {n: (served[n], shadow[n]) for n in names if _is_float(served[n])}
        if not floats:
            return Comparison(Verdict.INCOMPARABLE, diff, "no float output to diff")
        chosen_diff = max_abs_diff(
            {n: a for n, (a, _) in floats.items()}, {n: b for n, (_, b) in floats.items()}
        )
        agree = chosen_diff is not None and chosen_diff <= tolerance
    verdict = Verdict.AGREE if agree else Verdict.DISAGREE
    return Comparison(verdict, diff, f"{chosen}({','.join(names)})")


def _auto(served: Outputs, names: list[str], output: str | None) -> tuple[CompareMode, list[str]]:
    labels = [n for n in names if not _is_float(served[n])]
    if labels:
        return CompareMode.LABEL, labels
    if output is not None and served[output].ndim > 0 and served[output].shape[-1] > 1:
        return CompareMode.ARGMAX, names
    return CompareMode.MAX_ABS_DIFF, names


def predicted_labels(outputs: Outputs, output: str | None = None) -> Array:
    """One predicted class per row: the named output (or the first non-float one) flattened
    per row, or the arg-max of a float score output. For the golden-set gate."""
    if output is not None:
        if output not in outputs:
            raise AnswerError(f"the answer has no output {output!r} (it has {sorted(outputs)})")
        array = outputs[output]
    else:
        labels = [n for n in sorted(outputs) if not _is_float(outputs[n])]
        floats = [n for n in sorted(outputs) if _is_float(outputs[n])]
        if not labels and not floats:
            raise AnswerError("the answer has no outputs")
        array = outputs[labels[0]] if labels else outputs[floats[0]]
    if _is_float(array):
        if array.ndim == 0:
            raise AnswerError("a scalar float output holds no class scores")
        return np.asarray(np.argmax(array, axis=-1)).reshape(-1)
    rows = array.shape[0] if array.ndim else 1
    return array.reshape(rows, -1)[:, 0]
