"""The embedded engine: onnxruntime in-process, serving a Triton-layout model repository.

It reads the same ``<model>/config.pbtxt`` and ``<model>/<version>/model.onnx`` files that Triton
serves, resolves versions with the config's ``version_policy`` and opens one
``onnxruntime.InferenceSession`` per version, asking for TensorRT, then CUDA, then CPU. Requests are
validated against the config before anything runs, so a caller's mistake is an INVALID_ARGUMENT
that says what to fix rather than an onnxruntime stack trace. Sessions run in a thread pool; with
``max_batch_delay_s > 0`` concurrent requests for one version are concatenated into one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as kserve

from sidecar.backends.base import BackendError, ErrorKind

logger = logging.getLogger("sidecar.backends.onnx")

ENGINE = "onnxruntime"
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
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


def _error(kind: ErrorKind, message: str) -> BackendError:
    return BackendError(kind, message, backend=ENGINE)


# --- repository loading -------------------------------------------------------------------------


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
    """The versions to load, per ``version_policy`` (Triton's default: the latest one)."""
    filename = config.default_model_filename or DEFAULT_MODEL_FILENAME
    on_disk = sorted(
        int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / filename).is_file()
    )
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return on_disk
    if which == "specific":
        missing = sorted(set(policy.specific.versions) - set(on_disk))
        if missing:
            raise ValueError(
                f"version_policy lists {missing} but no {missing[0]}/{filename} exists"
            )
        return sorted(set(policy.specific.versions))
    count = policy.latest.num_versions if which == "latest" else 1
    return on_disk[-count:] if count > 0 else []


GPU_PROVIDERS = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})


def preferred_providers() -> list[str]:
    """TensorRT, then CUDA, then CPU, limited to what this onnxruntime build offers.

    onnxruntime-gpu lists the GPU providers even on a machine without an NVIDIA driver; asking
    for them there only produces errors and a slower start, so they are dropped when no driver
    library (libcuda) can be found.
    """
    available = set(ort.get_available_providers())
    if ctypes.util.find_library("cuda") is None:
        available -= GPU_PROVIDERS
    return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]


def open_session(path: Path, providers: Sequence[str]) -> ort.InferenceSession:
    """Open ``path``; log the providers onnxruntime really enabled, which may be fewer."""
    # onnxruntime print()s its provider fallback ("EP Error ...") to stdout; stdout belongs to
    # the sidecar's machine-readable output, so send that text to stderr with the other logs.
    with contextlib.redirect_stdout(sys.stderr):
        session = ort.InferenceSession(str(path), providers=list(providers))
    got = session.get_providers()
    if got[0] != providers[0]:
        logger.warning("%s: asked for %s, onnxruntime fell back to %s", path, list(providers), got)
    else:
        logger.info("%s: running on %s", path, got)
    return session


# --- request decoding and validation ------------------------------------------------------------


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


# --- running ------------------------------------------------------------------------------------

RunFn = Callable[[Tensors], Tensors]


@dataclass
class _Pending:
    feeds: Tensors
    rows: int
    future: asyncio.Future[Tensors]


@dataclass
class _Batcher:
    """Concatenates requests that arrive within ``delay_s`` into runs of at most ``max_rows``.

    Everything but the session run happens on the event loop thread, so no locks are needed.
    """

    run: RunFn
    executor: ThreadPoolExecutor
    max_rows: int
    delay_s: float
    _pending: list[_Pending] = field(default_factory=list)
    _timer: asyncio.TimerHandle | None = None
    _running: set[asyncio.Task[None]] = field(default_factory=set)

    async def submit(self, feeds: Tensors, rows: int) -> Tensors:
        loop = asyncio.get_running_loop()
        pending = _Pending(feeds, rows, loop.create_future())
        self._pending.append(pending)
        if sum(p.rows for p in self._pending) >= self.max_rows:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.delay_s, self._flush)
        return await pending.future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        for group in _groups(pending, self.max_rows):
            task = asyncio.get_running_loop().create_task(self._run_group(group))
            self._running.add(task)  # keep a reference until done, or the task may be collected
            task.add_done_callback(self._running.discard)

    async def _run_group(self, group: list[_Pending]) -> None:
        feeds = {name: np.concatenate([p.feeds[name] for p in group]) for name in group[0].feeds}
        logger.debug(
            "batched %d requests into one run of %d rows", len(group), sum(p.rows for p in group)
        )
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.run, feeds
            )
        except Exception as exc:
            for p in group:
                if not p.future.done():  # the caller may have given up (deadline)
                    p.future.set_exception(exc)
            return
        start = 0
        for p in group:
            if not p.future.done():
                p.future.set_result({n: a[start : start + p.rows] for n, a in outputs.items()})
            start += p.rows

    async def close(self) -> None:
        self._flush()
        await asyncio.gather(*self._running, return_exceptions=True)


def _groups(pending: list[_Pending], max_rows: int) -> list[list[_Pending]]:
    """Split in arrival order into groups whose rows sum to at most ``max_rows``."""
    groups: list[list[_Pending]] = []
    rows = max_rows  # forces a new group for the first item
    for p in pending:
        if rows + p.rows > max_rows:
            groups.append([])
            rows = 0
        groups[-1].append(p)
        rows += p.rows
    return groups


@dataclass
class _Version:
    session: ort.InferenceSession
    output_names: list[str]
    batcher: _Batcher | None
    # Run on the event loop itself: set for models whose run is shorter than a thread hand-off.
    inline: bool = False

    def run(self, feeds: Tensors) -> Tensors:
        """Blocking session run (called on a pool thread); onnxruntime errors become INTERNAL."""
        try:
            arrays = self.session.run(self.output_names, feeds)
        except Exception as exc:  # onnxruntime raises several unrelated exception types
            raise _error(ErrorKind.INTERNAL, f"onnxruntime failed: {exc}") from exc
        return dict(zip(self.output_names, arrays, strict=True))


@dataclass
class _Model:
    config: Any  # model_config_pb2.ModelConfig
    versions: dict[int, _Version]

    def version(self, requested: str) -> tuple[int, _Version]:
        """The version to run: the requested one, or the latest for ""; NOT_FOUND otherwise."""
        if not requested:
            latest = max(self.versions)
            return latest, self.versions[latest]
        number = int(requested) if requested.isdigit() else None
        if number is None or number not in self.versions:
            raise _error(
                ErrorKind.NOT_FOUND,
                f"model {self.config.name!r} has no version {requested!r}; "
                f"available versions: {sorted(self.versions)}",
            )
        return number, self.versions[number]


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


INLINE_THRESHOLD_S = 100e-6


def runs_inline(config: Any, version: _Version) -> bool:
    """Whether a batch-of-one run is so short that a thread-pool hand-off would dominate it.

    Timed once at load on zeros of the declared shape: a 5 µs model costs ~100 µs more through
    the pool than inline, while a model that takes milliseconds must not block the event loop.
    """
    feeds: Tensors = {}
    for tensor in config.input:
        dims = [1 if d < 0 else int(d) for d in tensor.dims]
        shape = [1, *dims] if config.max_batch_size > 0 else dims
        feeds[tensor.name] = np.zeros(shape, dtype=DTYPES[tensor.data_type].numpy)
    try:
        timings = []
        for _ in range(7):
            started = time.perf_counter()
            version.run(feeds)
            timings.append(time.perf_counter() - started)
    except BackendError:
        return False
    inline = sorted(timings)[len(timings) // 2] < INLINE_THRESHOLD_S
    logger.info(
        "%s: median run %.1f µs -> %s",
        config.name,
        sorted(timings)[3] * 1e6,
        "runs inline on the event loop" if inline else "runs on the thread pool",
    )
    return inline


# --- the backend --------------------------------------------------------------------------------


class OnnxEmbeddedBackend:
    """:class:`~sidecar.backends.base.InferenceBackend` running ONNX models in this process."""

    def __init__(
        self,
        repository: Path,
        *,
        providers: Sequence[str] | None = None,
        max_batch_delay_s: float = 0.0,
    ) -> None:
        self._repository = Path(repository)
        self._providers = list(providers) if providers is not None else None
        self._max_batch_delay_s = max_batch_delay_s
        self._models: dict[str, _Model] = {}
        self._executor: ThreadPoolExecutor | None = None

    @property
    def name(self) -> str:
        return ENGINE

    async def start(self) -> None:
        """Load every ONNX model in the repository; UNAVAILABLE if any of them cannot be loaded."""
        executor = ThreadPoolExecutor(
            max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="onnx"
        )
        try:
            models = await asyncio.get_running_loop().run_in_executor(
                executor, self._load_repository, executor
            )
        except BackendError:
            executor.shutdown(wait=False)
            raise
        self._models, self._executor = models, executor

    def _load_repository(self, executor: ThreadPoolExecutor) -> dict[str, _Model]:
        if not self._repository.is_dir():
            raise _error(ErrorKind.UNAVAILABLE, f"model repository {self._repository} not found")
        providers = self._providers or preferred_providers()
        models: dict[str, _Model] = {}
        for model_dir in sorted(p for p in self._repository.iterdir() if p.is_dir()):
            if not (model_dir / "config.pbtxt").is_file():
                continue
            try:
                model = self._load_model(model_dir, providers, executor)
            except Exception as exc:  # onnxruntime's load errors derive from Exception only
                raise _error(
                    ErrorKind.UNAVAILABLE, f"cannot load model {model_dir.name!r}: {exc}"
                ) from exc
            if model is not None:
                models[model_dir.name] = model
        return models

    def _load_model(
        self, model_dir: Path, providers: Sequence[str], executor: ThreadPoolExecutor
    ) -> _Model | None:
        config = load_model_config(model_dir)
        reason = unsupported_reason(config)
        if reason is not None:
            logger.warning("skipping model %r: %s", config.name, reason)
            return None
        filename = config.default_model_filename or DEFAULT_MODEL_FILENAME
        output_names = [t.name for t in config.output]
        versions: dict[int, _Version] = {}
        for number in resolve_versions(config, model_dir):
            session = open_session(model_dir / str(number) / filename, providers)
            versions[number] = _Version(session, output_names, None)
            versions[number].inline = runs_inline(config, versions[number])
            if self._max_batch_delay_s > 0 and batchable(config):
                versions[number].batcher = _Batcher(
                    versions[number].run, executor, config.max_batch_size, self._max_batch_delay_s
                )
        if not versions:
            raise ValueError("version_policy selects no version")
        return _Model(config, versions)

    async def close(self) -> None:
        models, self._models = self._models, {}
        for model in models.values():
            for version in model.versions.values():
                if version.batcher is not None:
                    await version.batcher.close()
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)  # lets in-flight runs finish

    async def server_ready(self) -> bool:
        return self._executor is not None

    async def model_ready(self, model: str, version: str) -> bool:
        try:
            self._model(model, version).version(version)
        except BackendError:
            return False
        return True

    async def model_metadata(self, model: str, version: str) -> kserve.ModelMetadataResponse:
        entry = self._model(model, version)
        entry.version(version)  # NOT_FOUND for a version that is not loaded
        config = entry.config

        def tensors(declared: Sequence[Any]) -> list[Any]:
            return [
                kserve.ModelMetadataResponse.TensorMetadata(
                    name=t.name,
                    datatype=DTYPES[t.data_type].kserve,
                    shape=expected_shape(config, t),
                )
                for t in declared
            ]

        return kserve.ModelMetadataResponse(
            name=config.name,
            versions=[str(v) for v in sorted(entry.versions)],
            platform=config.platform or config.backend,
            inputs=tensors(config.input),
            outputs=tensors(config.output),
        )

    async def model_config(self, model: str, version: str) -> kserve.ModelConfigResponse:
        entry = self._model(model, version)
        entry.version(version)
        response = kserve.ModelConfigResponse()
        response.config.CopyFrom(entry.config)
        return response

    async def infer(
        self,
        request: kserve.ModelInferRequest,
        *,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...] = (),  # unused: nothing remote to propagate it to
    ) -> kserve.ModelInferResponse:
        model = self._model(request.model_name, request.model_version)
        number, version = model.version(request.model_version)
        feeds = decode_inputs(model.config, request)
        names = requested_outputs(model.config, request)
        if timeout is not None and timeout <= 0:
            raise _error(
                ErrorKind.DEADLINE_EXCEEDED,
                f"model {model.config.name!r} version {number}: the deadline had already passed",
            )
        if version.inline and version.batcher is None:  # microseconds: nothing to time out
            return encode_response(request, model.config, number, version.run(feeds), names)
        try:
            outputs = await asyncio.wait_for(self._run(model, version, feeds), timeout)
        except TimeoutError as exc:
            raise _error(
                ErrorKind.DEADLINE_EXCEEDED,
                f"model {model.config.name!r} version {number} did not answer within {timeout} s",
            ) from exc
        return encode_response(request, model.config, number, outputs, names)

    async def _run(self, model: _Model, version: _Version, feeds: Tensors) -> Tensors:
        if version.batcher is not None:  # batching was asked for: it wins over inline runs
            return await version.batcher.submit(feeds, batch_rows(model.config, feeds))
        if version.inline:
            return version.run(feeds)
        return await asyncio.get_running_loop().run_in_executor(self._executor, version.run, feeds)

    def _model(self, name: str, version: str) -> _Model:
        if self._executor is None:
            raise _error(ErrorKind.UNAVAILABLE, "backend not started (call start() first)")
        model = self._models.get(name)
        if model is None:
            raise _error(
                ErrorKind.NOT_FOUND,
                f"unknown model {name!r} (version {version!r}); "
                f"available models: {sorted(self._models)}",
            )
        return model
