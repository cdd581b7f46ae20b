"""The embedded engine: onnxruntime in-process, serving a Triton-layout model repository.

It reads the same ``<model>/config.pbtxt`` and ``<model>/<version>/model.onnx`` files that Triton
serves, resolves versions with the config's ``version_policy`` and opens one
``onnxruntime.InferenceSession`` per version, asking for TensorRT, then CUDA, then CPU. A version
whose file is missing, corrupt or refused by onnxruntime degrades instead of stopping everything:
it is logged once with the reason, listed in ``load_failures``, not ready, and a request for it
fails with a fallback-eligible UNAVAILABLE naming the file, while every other version serves.
Start fails only when nothing at all could be loaded. Requests are
validated against the config before anything runs, so a caller's mistake is an INVALID_ARGUMENT
that says what to fix rather than an onnxruntime stack trace. Sessions run in a thread pool; with
``max_batch_delay_s > 0`` concurrent requests for one version are concatenated into one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import onnxruntime as ort
from tritonclient.grpc import service_pb2 as kserve

from sidecar.backends.base import BackendError, ErrorKind
from sidecar.backends.batching import _Batcher
from sidecar.backends.model_repository import (
    DTYPES,
    ENGINE,
    Tensors,
    load_model_config,
    model_filename,
    resolve_versions,
    unsupported_reason,
)
from sidecar.backends.model_repository import engine_error as _error
from sidecar.backends.tensor_codec import (
    batch_rows,
    batchable,
    decode_inputs,
    encode_response,
    expected_shape,
    requested_outputs,
)

logger = logging.getLogger("sidecar.backends.onnx")

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


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


# A version that could not be loaded, keyed (model, version); version "" = the whole model.
Failures = dict[tuple[str, str], str]


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
        self._failures: Failures = {}
        self._executor: ThreadPoolExecutor | None = None

    @property
    def name(self) -> str:
        return ENGINE

    @property
    def load_failures(self) -> Mapping[tuple[str, str], str]:
        """``(model, version) -> reason`` for what could not be loaded at start (version "": the
        whole model, e.g. an unreadable config). Read-only; empty when everything loaded."""
        return MappingProxyType(self._failures)

    async def start(self) -> None:
        """Load every ONNX model in the repository.

        A version or model that cannot be loaded is logged, recorded in ``load_failures`` and
        left out; UNAVAILABLE only when the repository is missing or nothing could be loaded.
        """
        executor = ThreadPoolExecutor(
            max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="onnx"
        )
        try:
            models, failures = await asyncio.get_running_loop().run_in_executor(
                executor, self._load_repository, executor
            )
        except BackendError:
            executor.shutdown(wait=False)
            raise
        self._models, self._failures, self._executor = models, failures, executor

    def _load_repository(self, executor: ThreadPoolExecutor) -> tuple[dict[str, _Model], Failures]:
        if not self._repository.is_dir():
            raise _error(ErrorKind.UNAVAILABLE, f"model repository {self._repository} not found")
        providers = self._providers or preferred_providers()
        models: dict[str, _Model] = {}
        failures: Failures = {}
        for model_dir in sorted(p for p in self._repository.iterdir() if p.is_dir()):
            if not (model_dir / "config.pbtxt").is_file():
                continue
            try:
                model = self._load_model(model_dir, providers, executor, failures)
            except Exception as exc:  # config.pbtxt unreadable or inconsistent
                failures[(model_dir.name, "")] = f"cannot load model {model_dir.name!r}: {exc}"
                continue
            if model is not None:
                models[model_dir.name] = model
        for (model_name, version), reason in sorted(failures.items()):
            # Logged here, once: readiness checks and requests only look the reason up.
            logger.error(
                "not serving model %r%s: %s",
                model_name,
                f" version {version}" if version else "",
                reason,
            )
        if not models:
            raise _error(ErrorKind.UNAVAILABLE, _nothing_loaded(self._repository, failures))
        return models, failures

    def _load_model(
        self,
        model_dir: Path,
        providers: Sequence[str],
        executor: ThreadPoolExecutor,
        failures: Failures,
    ) -> _Model | None:
        """The model with every version that loaded; each one that did not goes to ``failures``."""
        config = load_model_config(model_dir)
        reason = unsupported_reason(config)
        if reason is not None:  # e.g. a python-backend model beside the ONNX ones
            failures[(config.name, "")] = f"this engine cannot serve it: {reason}"
            return None
        numbers = resolve_versions(config, model_dir)
        if not numbers:
            failures[(config.name, "")] = (
                f"version_policy selects no version: no <version>/{model_filename(config)} "
                f"in {model_dir}"
            )
            return None
        versions: dict[int, _Version] = {}
        for number in numbers:
            path = model_dir / str(number) / model_filename(config)
            try:
                versions[number] = self._load_version(config, path, providers, executor)
            except Exception as exc:  # onnxruntime's load errors derive from Exception only
                failures[(config.name, str(number))] = _load_failure(path, exc)
        return _Model(config, versions) if versions else None

    def _load_version(
        self, config: Any, path: Path, providers: Sequence[str], executor: ThreadPoolExecutor
    ) -> _Version:
        if not path.is_file():
            raise FileNotFoundError("the file does not exist")
        version = _Version(open_session(path, providers), [t.name for t in config.output], None)
        version.inline = runs_inline(config, version)
        if self._max_batch_delay_s > 0 and batchable(config):
            version.batcher = _Batcher(
                version.run, executor, config.max_batch_size, self._max_batch_delay_s
            )
        return version

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
        return self._unavailable_reason(model, version) is None

    async def version_states(
        self, targets: Iterable[tuple[str, str]]
    ) -> Mapping[tuple[str, str], str | None]:
        """None for a loaded version, else the message a request for it would fail with."""
        return {(m, v): self._unavailable_reason(m, v) for m, v in targets}

    def _unavailable_reason(self, model: str, version: str) -> str | None:
        try:
            self._resolve(model, version)
        except BackendError as exc:
            return exc.message
        return None

    async def model_metadata(self, model: str, version: str) -> kserve.ModelMetadataResponse:
        entry, _, _ = self._resolve(model, version)  # fails for a version that is not loaded
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
        entry, _, _ = self._resolve(model, version)
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
        model, number, version = self._resolve(request.model_name, request.model_version)
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

    def _resolve(self, name: str, version: str) -> tuple[_Model, int, _Version]:
        """The loaded version to run, or the BackendError a request for it gets.

        A version that failed to load is UNAVAILABLE (fallback-eligible) with the load failure's
        reason; one that was never configured is NOT_FOUND.
        """
        if self._executor is None:
            raise _error(ErrorKind.UNAVAILABLE, "backend not started (call start() first)")
        for key in ((name, version), (name, "")):
            if key in self._failures:
                what = f"model {name!r} version {version!r}" if version else f"model {name!r}"
                raise _error(ErrorKind.UNAVAILABLE, f"{what} is not served: {self._failures[key]}")
        model = self._models.get(name)
        if model is None:
            raise _error(
                ErrorKind.NOT_FOUND,
                f"unknown model {name!r} (version {version!r}); "
                f"available models: {sorted(self._models)}",
            )
        number, loaded = model.version(version)
        return model, number, loaded


def _load_failure(path: Path, exc: Exception) -> str:
    """One line naming the file and onnxruntime's reason (its messages span several lines)."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return f"cannot load {path}: {reason}"


def _nothing_loaded(repository: Path, failures: Failures) -> str:
    if not failures:
        return (
            f"no model found in {repository} (expected <model>/config.pbtxt and <version>/ files)"
        )
    listed = "; ".join(
        f"{model}{' version ' + version if version else ''}: {reason}"
        for (model, version), reason in sorted(failures.items())
    )
    return f"no model in {repository} could be loaded: {listed}"
