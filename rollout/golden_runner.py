"""The golden-set gate's thin runner: load the golden file, call both versions directly on a
backend, hand the answers to the pure :func:`rollout.golden.judge`.

"Directly" means not through a sidecar: the requests go to Triton (``TritonBackend``) or to the
embedded onnxruntime engine in this process (``OnnxEmbeddedBackend``) with the version set, so a
flag that forbids version pinning still gets its gate. Each request is built as the sidecar
builds it (:class:`sidecar.calls.MessageCall`: model, version and the variant's parameters), one
sample per request, so the latencies are those of single requests.

The golden file is a ``numpy.savez`` archive: one array per model input, named after the input,
first axis = samples (the digits set has ``pixels`` [450, 64] FP32), and the expected labels
(integers, one per sample) under ``labels`` or the flag's ``golden.labels``.
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as kserve

from flags.schema import FlagSpec, Golden, Target
from rollout.gates import fingerprint
from rollout.golden import GoldenResult, VersionRun, judge
from sidecar.answers import NUMPY_TO_KSERVE, AnswerError, decode_response, predicted_labels
from sidecar.backends.base import BackendError, InferenceBackend
from sidecar.calls import MessageCall
from sidecar.plan import Hop

DEFAULT_FILE = "golden.npz"
MAX_ERROR_EXAMPLES = 3


class GoldenError(ValueError):
    """The gate cannot run (no candidate, unreadable golden file): the message says what to fix."""


@dataclass(frozen=True)
class GoldenSet:
    path: Path
    inputs: Mapping[str, np.ndarray[Any, Any]]
    labels: tuple[int, ...]


def golden_file(spec: FlagSpec, repository: Path, override: Path | None = None) -> Path:
    """The golden file: ``--file``, else the flag's ``golden.file`` (relative to the model
    repository, or absolute), else ``<repository>/<default variant's model>/golden.npz``."""
    if override is not None:
        return override
    configured = spec.golden.file if spec.golden is not None else None
    if configured is not None:
        path = Path(configured)
        return path if path.is_absolute() else repository / path
    return repository / spec.variants[spec.default_variant].model / DEFAULT_FILE


def load_golden(path: Path, labels_key: str = "labels") -> GoldenSet:
    if not path.is_file():
        raise GoldenError(
            f"golden file {path} not found: put a numpy .npz with the inputs and `{labels_key}` "
            f"there, or name one in the flag's golden.file (or pass --file)"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise GoldenError(f"golden file {path} is not a readable .npz: {exc}") from exc
    if labels_key not in arrays:
        raise GoldenError(
            f"golden file {path} has no `{labels_key}` array (it has {sorted(arrays)})"
        )
    labels = arrays.pop(labels_key)
    if labels.ndim != 1 or labels.dtype.kind not in "iub":
        raise GoldenError(
            f"golden file {path}: `{labels_key}` must be one integer label per sample, "
            f"not {labels.dtype} of shape {list(labels.shape)}"
        )
    if not arrays:
        raise GoldenError(f"golden file {path} has labels but no input arrays")
    for name, array in arrays.items():
        if array.ndim == 0 or array.shape[0] != labels.shape[0]:
            raise GoldenError(
                f"golden file {path}: input `{name}` has shape {list(array.shape)}; its first "
                f"axis must have one row per label ({labels.shape[0]})"
            )
        if array.dtype not in NUMPY_TO_KSERVE:
            raise GoldenError(f"golden file {path}: input `{name}` has unsupported {array.dtype}")
    return GoldenSet(path, arrays, tuple(int(v) for v in labels))


def pick_candidate(spec: FlagSpec, candidate: str | None = None) -> str:
    """The variant the gate judges: ``candidate``, else the ramp's, the shadow's, or the one
    variant that is not the default."""
    if candidate is not None:
        if candidate not in spec.variants:
            raise GoldenError(
                f"flag {spec.key!r} has no variant {candidate!r} (variants: "
                f"{', '.join(sorted(spec.variants))})"
            )
        chosen = candidate
    elif spec.ramp is not None:
        chosen = spec.ramp.variant
    elif spec.shadow is not None:
        chosen = spec.shadow.variant
    else:
        others = [v for v in spec.variants if v != spec.default_variant]
        if len(others) != 1:
            raise GoldenError(
                f"flag {spec.key!r} has no ramp or shadow variant and {len(others)} candidates: "
                f"name one with --candidate"
            )
        chosen = others[0]
    if chosen == spec.default_variant:
        raise GoldenError(f"{chosen!r} is the default variant: the gate compares a candidate to it")
    return chosen


def _request(golden: GoldenSet, index: int, model: str) -> kserve.ModelInferRequest:
    request = kserve.ModelInferRequest(model_name=model, id=f"golden-{index}")
    for name, array in golden.inputs.items():
        row = np.ascontiguousarray(array[index : index + 1])
        tensor = request.inputs.add(name=name, datatype=NUMPY_TO_KSERVE[row.dtype])
        tensor.shape.extend(row.shape)
        request.raw_input_contents.append(row.tobytes())
    return request


async def run_version(
    backend: InferenceBackend,
    golden: GoldenSet,
    variant: str,
    target: Target,
    *,
    output: str | None,
    timeout_s: float,
) -> VersionRun:
    """Every golden sample through one version, one request each, in order."""
    hop = Hop.of(target)
    predictions: list[int | None] = []
    seconds: list[float] = []
    examples: list[str] = []
    for index in range(len(golden.labels)):
        call = MessageCall(_request(golden, index, target.model))
        started = time.perf_counter()
        try:
            reply = await call.send(backend, hop, timeout_s, ())
            label = predicted_labels(decode_response(reply), output)
            if label.shape[0] != 1:
                raise AnswerError(f"{label.shape[0]} labels for one sample")
            predictions.append(int(label[0]))
        except (BackendError, AnswerError) as exc:
            predictions.append(None)
            if len(examples) < MAX_ERROR_EXAMPLES:
                examples.append(str(exc))
        seconds.append(time.perf_counter() - started)
    return VersionRun(
        variant, target.model, target.version, tuple(predictions), tuple(seconds), tuple(examples)
    )


def open_backend(triton_url: str | None, repository: Path) -> tuple[InferenceBackend, str]:
    """Triton at ``triton_url``, else the embedded onnxruntime engine on ``repository``; and
    where that is, in words (for error messages)."""
    if triton_url:
        from sidecar.backends.triton import TritonBackend

        return TritonBackend(triton_url), f"Triton at {triton_url}"
    from sidecar.backends.onnx_embedded import OnnxEmbeddedBackend

    return OnnxEmbeddedBackend(repository), f"the embedded engine on {repository}"


async def run_on(
    backend: InferenceBackend, where: str, spec: FlagSpec, data: GoldenSet, **options: Any
) -> GoldenResult:
    """Start ``backend``, check it is ready, run the gate, close it again."""
    await backend.start()
    try:
        if not await backend.server_ready():
            raise GoldenError(f"{where} is not ready: start it, or check the address")
        return await run_gate(spec, backend, data, **options)
    finally:
        await backend.close()


async def run_gate(
    spec: FlagSpec,
    backend: InferenceBackend,
    golden: GoldenSet,
    *,
    candidate: str | None = None,
    timeout_s: float = 10.0,
    context: dict[str, Any] | None = None,
) -> GoldenResult:
    """Run the golden set through the default variant and the candidate; judge the answers."""
    settings = spec.golden or Golden()
    chosen = pick_candidate(spec, candidate)
    runs = [
        await run_version(
            backend, golden, name, spec.variants[name], output=settings.output, timeout_s=timeout_s
        )
        for name in (spec.default_variant, chosen)
    ]
    return judge(
        spec.key,
        golden.labels,
        runs[0],
        runs[1],
        max_accuracy_drop=settings.max_accuracy_drop,
        context={
            "golden_file": str(golden.path),
            "backend": backend.name,
            # what the result is valid for: the controller reuses it only for the same
            "fingerprint": fingerprint(spec, chosen),
            **(context or {}),
        },
    )
