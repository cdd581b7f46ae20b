"""One inference request as the router sends it: parsed, or the raw bytes a client sent.

The composition root decides which: in front of a backend that forwards bytes (Triton), the
KServe facade never parses a request; it reads the routing header off the wire and each hop
appends its target (:mod:`sidecar.wire`). The embedded engine needs tensors, so it gets parsed
messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from tritonclient.grpc import service_pb2 as kserve

from flags.schema import Scalar
from sidecar import wire
from sidecar.backends.base import InferenceBackend, RawInferenceBackend
from sidecar.plan import Hop

Metadata = tuple[tuple[str, str], ...]


class BackendCall(Protocol):
    """One request, sent once per hop (twice after a failure)."""

    @property
    def model_name(self) -> str: ...

    @property
    def pinned_version(self) -> str: ...

    async def send(self, backend: Any, hop: Hop, timeout: float, metadata: Metadata) -> Any: ...

    def served_version(self, reply: Any, hop: Hop) -> str: ...


class MessageCall:
    """A parsed ModelInferRequest (native API; embedded engine)."""

    __slots__ = ("_caller_set", "request")

    def __init__(self, request: kserve.ModelInferRequest) -> None:
        self.request = request
        self._caller_set = frozenset(request.parameters)

    @property
    def model_name(self) -> str:
        return str(self.request.model_name)

    @property
    def pinned_version(self) -> str:
        return str(self.request.model_version)

    async def send(
        self, backend: InferenceBackend, hop: Hop, timeout: float, metadata: Metadata
    ) -> Any:
        request = self.request
        request.model_name = hop.model
        request.model_version = hop.version
        _apply_parameters(request, hop.parameters, self._caller_set)
        return await backend.infer(request, timeout=timeout, metadata=metadata)

    def served_version(self, reply: kserve.ModelInferResponse, hop: Hop) -> str:
        return str(reply.model_version) or hop.version


class RawCall:
    """The serialized request as the client sent it, forwarded with the target appended."""

    __slots__ = ("header", "raw")

    def __init__(self, raw: bytes, header: wire.RequestHeader) -> None:
        self.raw = raw
        self.header = header

    @property
    def model_name(self) -> str:
        return self.header.model_name

    @property
    def pinned_version(self) -> str:
        return self.header.model_version

    async def send(
        self, backend: RawInferenceBackend, hop: Hop, timeout: float, metadata: Metadata
    ) -> bytes:
        payload = self.raw + hop.suffix_for(self.header.parameter_keys)
        what = (
            f"model {hop.model!r} version {hop.version!r}"
            if hop.version
            else f"model {hop.model!r}"
        )
        return await backend.infer_raw(payload, timeout=timeout, metadata=metadata, what=what)

    def served_version(self, reply: bytes, hop: Hop) -> str:
        # Triton serves exactly the version asked for, or fails: read the reply only when the
        # hop left the choice to Triton (passthrough), which saves a parse per request.
        return hop.version or wire.read_response_version(reply)


def _apply_parameters(
    request: kserve.ModelInferRequest, parameters: Mapping[str, Scalar], caller_set: frozenset[str]
) -> None:
    """Set the hop's variant parameters; one the caller sent explicitly wins.

    Parameters a previous hop added are removed first, so a fallback to the default variant
    never carries the candidate's parameters (say, its system prompt).
    """
    for name in [n for n in request.parameters if n not in caller_set]:
        del request.parameters[name]
    for name, value in parameters.items():
        if name in caller_set:
            continue
        set_parameter(request.parameters[name], value)


def set_parameter(param: kserve.InferParameter, value: Scalar) -> None:
    """Store a flag scalar in a KServe InferParameter under the matching type."""
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)
