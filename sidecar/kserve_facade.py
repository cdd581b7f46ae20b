"""The standard KServe-v2 ``inference.GRPCInferenceService``, so unmodified Triton clients work.

The user id comes from metadata ``x-user-id`` (configurable; or a request parameter of that name),
attributes from ``x-attr-<name>``. When the request names no version the flag decides; a version
pins it if the flag allows. The response's ``model_version`` is the version that served, and its
parameters (and trailing metadata) carry the flag, variant, reason and fallback.

``ModelInfer`` is registered bytes-in, bytes-out. In front of Triton the request is never parsed:
the routing header is read off the wire, the target appended, and Triton's reply returned with the
assignment parameters appended (:mod:`sidecar.wire`). The embedded engine needs the tensors, so
there the request is parsed as usual.

``ModelStreamInfer`` (decoupled models, token streaming) is routed in front of Triton only: the
cohort is chosen once per stream and every message retargeted (:mod:`sidecar.streams`). The
embedded engine answers UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as kserve

import sidecar
from flags.store import FlagStore
from sidecar import render, wire
from sidecar.backends.base import InferenceBackend
from sidecar.calls import MessageCall, RawCall, set_parameter
from sidecar.errors import InvalidRequest, Unsupported
from sidecar.routing import Router
from sidecar.streams import StreamRoute
from sidecar.subjects import SubjectRules, subject_from_metadata
from sidecar.telemetry import metadata_dict
from sidecar.tensors import check_inputs, check_message

Context: TypeAlias = Any  # grpc.aio.ServicerContext (grpc ships no type information)
SERVICE = "inference.GRPCInferenceService"


class KServeFacade:
    def __init__(
        self,
        router: Router,
        store: FlagStore,
        rules: SubjectRules,
        *,
        forward_raw: bool,
        serving: Callable[[], bool],
    ) -> None:
        """``forward_raw``: pass requests to the backend as the bytes the client sent (the
        composition root decides, from the backend it built). ``serving``: the sidecar's
        readiness, as its health service reports it."""
        self._router = router
        self._store = store
        self._rules = rules
        self._raw = forward_raw
        self._serving = serving

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's method handlers; methods not listed answer UNIMPLEMENTED."""

        def unary(method: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ServerLive": unary(
                    self.ServerLive, kserve.ServerLiveRequest, kserve.ServerLiveResponse
                ),
                "ServerReady": unary(
                    self.ServerReady, kserve.ServerReadyRequest, kserve.ServerReadyResponse
                ),
                "ServerMetadata": unary(
                    self.ServerMetadata, kserve.ServerMetadataRequest, kserve.ServerMetadataResponse
                ),
                "ModelReady": unary(
                    self.ModelReady, kserve.ModelReadyRequest, kserve.ModelReadyResponse
                ),
                "ModelMetadata": unary(
                    self.ModelMetadata, kserve.ModelMetadataRequest, kserve.ModelMetadataResponse
                ),
                "ModelConfig": unary(
                    self.ModelConfig, kserve.ModelConfigRequest, kserve.ModelConfigResponse
                ),
                "ModelInfer": grpc.unary_unary_rpc_method_handler(
                    self.ModelInfer
                ),  # bytes in, bytes out
                "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                    self.ModelStreamInfer
                ),  # bytes in, bytes out
            },
        )

    def _backend_target(self, model: str, version: str) -> tuple[InferenceBackend, str, str]:
        """Which backend, model and version answer metadata questions about ``model``: the
        flag's default variant (on its backend) unless a version is named."""
        flag = self._store.snapshot.get(model)
        if flag is None:
            return self._router.backend, model, version
        default = flag.spec.variants[flag.spec.default_variant]
        backend = self._router.backends.get(default.backend or "", self._router.backend)
        return backend, default.model, version or default.version

    async def ServerLive(
        self, request: kserve.ServerLiveRequest, context: Context
    ) -> kserve.ServerLiveResponse:
        return kserve.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: kserve.ServerReadyRequest, context: Context
    ) -> kserve.ServerReadyResponse:
        return kserve.ServerReadyResponse(ready=self._serving())

    async def ServerMetadata(
        self, request: kserve.ServerMetadataRequest, context: Context
    ) -> kserve.ServerMetadataResponse:
        return kserve.ServerMetadataResponse(
            name="trafficsplit", version=sidecar.__version__, extensions=[]
        )

    async def ModelReady(
        self, request: kserve.ModelReadyRequest, context: Context
    ) -> kserve.ModelReadyResponse:
        backend, model, version = self._backend_target(request.name, request.version)
        return kserve.ModelReadyResponse(ready=await backend.model_ready(model, version))

    async def ModelMetadata(
        self, request: kserve.ModelMetadataRequest, context: Context
    ) -> kserve.ModelMetadataResponse:
        backend, model, version = self._backend_target(request.name, request.version)
        response = await backend.model_metadata(model, version)
        response.name = request.name
        return response

    async def ModelConfig(
        self, request: kserve.ModelConfigRequest, context: Context
    ) -> kserve.ModelConfigResponse:
        backend, model, version = self._backend_target(request.name, request.version)
        return await backend.model_config(model, version)

    async def ModelInfer(self, raw: bytes, context: Context) -> bytes:
        try:
            header = wire.read_request_header(raw)
        except wire.WireError as exc:
            raise InvalidRequest(str(exc)) from exc
        invocation = context.invocation_metadata() or ()
        subject = subject_from_metadata(
            metadata_dict(invocation),
            self._rules,
            parameter_user_id=header.string_parameters.get(self._rules.user_id_header, ""),
        )
        timeout = context.time_remaining()
        if self._raw:
            check_inputs(header.inputs, header.raw_input_sizes)
            routed = await self._router.infer(
                RawCall(raw, header),
                subject,
                timeout=timeout,
                rpc="ModelInfer",
                metadata=invocation,
            )
            context.set_trailing_metadata(render.trailing_metadata(routed.assignment))
            return bytes(routed.response) + render.response_suffix(routed.assignment)
        try:
            request = kserve.ModelInferRequest.FromString(raw)
        except DecodeError as exc:  # e.g. invalid UTF-8 in a string field
            raise InvalidRequest(f"malformed ModelInferRequest: {exc}") from exc
        check_message(request)
        routed = await self._router.infer(
            MessageCall(request), subject, timeout=timeout, rpc="ModelInfer", metadata=invocation
        )
        response: kserve.ModelInferResponse = routed.response
        response.model_version = routed.assignment.served_version
        for key, value in render.response_parameters(routed.assignment).items():
            set_parameter(response.parameters[key], value)
        context.set_trailing_metadata(render.trailing_metadata(routed.assignment))
        return bytes(response.SerializeToString())

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        """Route a stream to one cohort's version (sidecar.streams); Triton only."""
        if not self._raw:
            raise Unsupported(
                "ModelStreamInfer is routed only in front of Triton (--triton-url): the embedded "
                "onnxruntime engine answers each request with one response, so call ModelInfer"
            )
        first = await anext(aiter(requests), None)
        if first is None:
            return  # the client closed without a request: nothing to route
        try:
            header = wire.read_request_header(first)
        except wire.WireError as exc:
            raise InvalidRequest(f"message 1 of the stream: {exc}") from exc
        check_inputs(header.inputs, header.raw_input_sizes)
        invocation = context.invocation_metadata() or ()
        subject = subject_from_metadata(
            metadata_dict(invocation),
            self._rules,
            parameter_user_id=header.string_parameters.get(self._rules.user_id_header, ""),
        )
        route = StreamRoute(
            self._router,
            first,
            header,
            requests,
            subject,
            timeout=context.time_remaining(),
            metadata=invocation,
        )
        try:
            async for response in route.responses():
                yield response
        finally:
            if route.assignment is not None:
                context.set_trailing_metadata(render.trailing_metadata(route.assignment))
