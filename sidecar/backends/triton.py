"""The remote engine: a Triton Inference Server reached over KServe-v2 gRPC.

This is a pass-through. ``infer`` hands the caller's ``ModelInferRequest`` to Triton unchanged
through tritonclient's generated ``GRPCInferenceServiceStub`` on one long-lived ``grpc.aio``
channel: tensors stay the raw bytes the caller sent, and no numpy arrays or ``InferInput`` objects
are built, because decoding and re-encoding what is only passed on costs CPU and copies and can
only lose information. tritonclient's high-level client is deliberately not used; it would do
exactly that, and it reduces errors to strings.

Every ``grpc.aio.AioRpcError`` is translated into a :class:`BackendError` here and nowhere else.
Triton reports an unknown model or a version that is not loaded with several status codes
(NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE, depending on release and call), so the message text is
inspected as well as the code.

Recovery after an outage is the channel's job, tuned for a next-hop server rather than gRPC's
defaults for distant services (first retry after 1 s, each wait 1.6 times the last, up to 120 s
between attempts): reconnect attempts here are at most 0.5 s apart, so once Triton listens again
traffic resumes within about 0.6 s. Nothing else is needed while requests flow (each one is a
connection attempt when the channel is idle); when none do, the server's periodic ``server_ready``
probe keeps the channel trying, and ``server_ready`` logs when Triton goes away and comes back.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc  # type: ignore[import-untyped, unused-ignore]  # no stubs in the dev deps yet
from tritonclient.grpc import service_pb2 as kserve
from tritonclient.grpc import service_pb2_grpc

from sidecar.backends.base import BackendError, ErrorKind

if TYPE_CHECKING:
    from sidecar.backends.triton_stream import TritonStream

logger = logging.getLogger("sidecar.backends.triton")

ENGINE = "triton"
MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
MIB = 1024 * 1024
# Triton's wording for "no such model/version", whatever status code it came with.
_NOT_FOUND_TEXT = re.compile(
    r"unknown model|version \S+ is not (?:at )?(?:ready|found)|is not found", re.I
)
# Triton's wording for a request its protobuf parser refused ("Unable to parse request", sent as
# INTERNAL): the sender's bytes are at fault, not the model, so it must not count against a version.
_UNPARSABLE_TEXT = re.compile(
    r"unable to parse (?:the )?request|failed to parse (?:the )?request", re.I
)
# gRPC channel arguments: reconnect quickly (see the module docstring). The connect timeout
# ("min_reconnect_backoff") stays a full second so a slow handshake is not cut off mid-way.
RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 1000),
)
# Readiness probes answer "no" instead of raising when these are the reason.
_NOT_READY_KINDS = frozenset(
    {ErrorKind.NOT_FOUND, ErrorKind.UNAVAILABLE, ErrorKind.DEADLINE_EXCEEDED}
)


class TritonBackend:
    """:class:`~sidecar.backends.base.InferenceBackend` forwarding to Triton at ``url``."""

    def __init__(
        self,
        url: str,
        *,
        max_message_bytes: int = 64 * MIB,
        control_timeout_s: float = 5.0,
    ) -> None:
        """``url`` is ``host:port`` of Triton's gRPC endpoint; ``control_timeout_s`` bounds the
        calls that carry no caller deadline (readiness, metadata, config)."""
        self._url = url
        self._max_message_bytes = max_message_bytes
        self._control_timeout_s = control_timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._infer_raw: Any = None
        self._stream_raw: Any = None
        self._reachable: bool | None = None  # last server_ready answer, for transition logs

    @property
    def name(self) -> str:
        return ENGINE

    @property
    def url(self) -> str:
        return self._url

    async def start(self) -> None:
        """Open the channel. It connects lazily and reconnects by itself, so a Triton that comes
        up after the sidecar is fine; ``server_ready`` tells whether it is there yet."""
        if self._channel is not None:
            return
        limit = self._max_message_bytes
        self._channel = grpc.aio.insecure_channel(
            self._url,
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
                *RECONNECT_OPTIONS,
            ],
        )
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        # Same method, bytes in and bytes out: the sidecar's pass-through never parses tensors.
        self._infer_raw = self._channel.unary_unary(MODEL_INFER_METHOD)
        self._stream_raw = self._channel.stream_stream(MODEL_STREAM_INFER_METHOD)

    async def close(self) -> None:
        channel, self._channel, self._stub, self._infer_raw = self._channel, None, None, None
        self._stream_raw = None
        if channel is not None:
            await channel.close()

    async def server_ready(self) -> bool:
        """False, not an error, when Triton is unreachable or not ready.

        Called periodically by the server, it is also the active probe that keeps the channel
        reconnecting while no requests flow. Logs once per change, not once per probe.
        """
        try:
            response = await self._call("ServerReady", kserve.ServerReadyRequest(), what="server")
        except BackendError as exc:
            if exc.kind not in _NOT_READY_KINDS:
                raise
            self._note_reachable(False, exc.message)
            return False
        ready = bool(response.ready)
        self._note_reachable(ready, "ServerReady answered false")
        return ready

    def _note_reachable(self, ready: bool, why: str) -> None:
        if ready != self._reachable:
            if ready:
                logger.info("Triton at %s is ready", self._url)
            else:
                logger.warning("Triton at %s is not ready: %s", self._url, why)
        self._reachable = ready

    async def model_ready(self, model: str, version: str) -> bool:
        """False, not an error, for a model or version that is unknown, loading or unreachable."""
        try:
            return await self._model_ready(model, version)
        except BackendError as exc:
            if exc.kind not in _NOT_READY_KINDS:
                raise
            logger.debug("%s not ready on Triton at %s: %s", model, self._url, exc)
            return False

    async def version_states(
        self, targets: Iterable[tuple[str, str]]
    ) -> Mapping[tuple[str, str], str | None]:
        """``ModelReady`` for every target at once; for those not ready, Triton's own reason from
        one ``RepositoryIndex`` call when it has one (e.g. the load error of a broken version)."""
        wanted = list(dict.fromkeys(targets))
        answers = await asyncio.gather(*(self._version_state(m, v) for m, v in wanted))
        states = dict(zip(wanted, answers, strict=True))
        not_ready = [t for t, reason in states.items() if reason == _NOT_READY_ANSWER]
        if not_ready:
            index = await self._repository_index()
            for model, version in not_ready:
                states[model, version] = _index_reason(index, model, version, url=self._url)
        return states

    async def _version_state(self, model: str, version: str) -> str | None:
        try:
            ready = await self._model_ready(model, version)
        except BackendError as exc:  # whatever the kind: a reason, never an exception
            return exc.message
        return None if ready else _NOT_READY_ANSWER

    async def _model_ready(self, model: str, version: str) -> bool:
        request = kserve.ModelReadyRequest(name=model, version=version)
        response = await self._call("ModelReady", request, what=_describe(model, version))
        return bool(response.ready)

    async def _repository_index(self) -> dict[tuple[str, str], tuple[str, str]] | None:
        """``(model, version) -> (state, reason)`` from Triton, or None if it cannot say."""
        try:
            index = await self._call(
                "RepositoryIndex", kserve.RepositoryIndexRequest(), what="the repository index"
            )
        except BackendError as exc:
            logger.debug("no repository index from Triton at %s: %s", self._url, exc)
            return None
        return {(m.name, m.version): (m.state, m.reason) for m in index.models}

    async def model_metadata(self, model: str, version: str) -> kserve.ModelMetadataResponse:
        request = kserve.ModelMetadataRequest(name=model, version=version)
        return await self._call("ModelMetadata", request, what=_describe(model, version))

    async def model_config(self, model: str, version: str) -> kserve.ModelConfigResponse:
        request = kserve.ModelConfigRequest(name=model, version=version)
        return await self._call("ModelConfig", request, what=_describe(model, version))

    async def infer(
        self,
        request: kserve.ModelInferRequest,
        *,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> kserve.ModelInferResponse:
        """Forward ``request`` as received; tensors stay raw bytes end to end."""
        what = _describe(request.model_name, request.model_version)
        return await self._call(
            "ModelInfer", request, what=what, timeout=timeout, metadata=metadata
        )

    def _not_started(self) -> BackendError:
        return BackendError(
            ErrorKind.UNAVAILABLE,
            f"backend for Triton at {self._url} not started (call start() first)",
            backend=ENGINE,
        )

    async def infer_raw(
        self,
        request: bytes,
        *,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...] = (),
        what: str = "the model",
    ) -> bytes:
        """Forward a serialized ModelInferRequest; return the serialized response as received."""
        if self._infer_raw is None:
            raise self._not_started()
        try:
            return bytes(await self._infer_raw(request, timeout=timeout, metadata=metadata))
        except grpc.aio.AioRpcError as exc:
            raise translate_error(exc, url=self._url, what=what, timeout=timeout) from exc

    def open_stream(
        self,
        *,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...] = (),
        what: str = "the model",
    ) -> TritonStream:
        """A ``ModelStreamInfer`` call on the same channel, bytes in and bytes out
        (:mod:`sidecar.backends.triton_stream`)."""
        from sidecar.backends.triton_stream import TritonStream

        if self._stream_raw is None:
            raise self._not_started()
        call = self._stream_raw(timeout=timeout, metadata=metadata)
        return TritonStream(call, url=self._url, what=what, timeout=timeout)

    async def _call(
        self,
        method: str,
        request: Any,
        *,
        what: str,
        timeout: float | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> Any:
        """One unary call with a deadline and metadata; gRPC errors become BackendErrors."""
        if self._stub is None:
            raise self._not_started()
        deadline = (
            self._control_timeout_s if timeout is None and method != "ModelInfer" else timeout
        )
        try:
            return await getattr(self._stub, method)(request, timeout=deadline, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise translate_error(exc, url=self._url, what=what, timeout=deadline) from exc


_NOT_READY_ANSWER = "ModelReady answered false"


def _index_reason(
    index: Mapping[tuple[str, str], tuple[str, str]] | None, model: str, version: str, *, url: str
) -> str:
    """Why Triton does not serve ``model``/``version``, in its repository index's words."""
    what = _describe(model, version)
    base = f"{what} is not ready on Triton at {url}"
    if index is None:
        return base
    entry = index.get((model, version))
    if entry is not None:
        state, reason = entry
        return f"{base}: {state or 'state unknown'}{': ' + reason if reason else ''}"
    listed = sorted(v for m, v in index if m == model and v)
    if listed:
        return f"{base}: its repository has versions {listed} of {model!r}"
    if any(m == model for m, _ in index):
        return f"{base}: the model is in its repository but not loaded"
    return f"{base}: no model {model!r} in its repository"


def _describe(model: str, version: str) -> str:
    return f"model {model!r} version {version!r}" if version else f"model {model!r}"


def translate_error(
    exc: grpc.aio.AioRpcError, *, url: str, what: str, timeout: float | None
) -> BackendError:
    """Map a failed Triton call onto an ErrorKind, keeping Triton's own words in the message."""
    code = exc.code()
    details = exc.details() or code.name
    kind, message = _classify(code, details, url=url, what=what, timeout=timeout)
    return BackendError(kind, message, backend=ENGINE)


def _classify(
    code: grpc.StatusCode, details: str, *, url: str, what: str, timeout: float | None
) -> tuple[ErrorKind, str]:
    # Checked before the codes: Triton sends "unknown model" as INVALID_ARGUMENT or UNAVAILABLE.
    if code == grpc.StatusCode.NOT_FOUND or (
        code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE)
        and _NOT_FOUND_TEXT.search(details)
    ):
        return ErrorKind.NOT_FOUND, f"{what} is not available on Triton at {url}: {details}"
    # Before INTERNAL: a parse failure is the caller's, never fallback-eligible (a malformed request
    # is just as malformed for the stable version) and never a strike against the candidate.
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT) and (
        _UNPARSABLE_TEXT.search(details)
    ):
        return (
            ErrorKind.INVALID_ARGUMENT,
            f"malformed request: Triton could not parse the ModelInferRequest for {what} "
            f"({details}); send a ModelInferRequest serialized by a protobuf library",
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return ErrorKind.UNAVAILABLE, f"Triton at {url} is unavailable: {details}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return (
            ErrorKind.DEADLINE_EXCEEDED,
            f"Triton at {url} did not answer for {what} within {timeout} s",
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ErrorKind.INVALID_ARGUMENT, f"Triton rejected the request for {what}: {details}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ErrorKind.RESOURCE_EXHAUSTED, f"Triton at {url} for {what}: {details}"
    return ErrorKind.INTERNAL, f"Triton at {url} failed on {what} ({code.name}): {details}"
