"""The standard KServe-v2 ``inference.GRPCInferenceService``, so unmodified Triton clients work.

The user id comes from metadata ``x-user-id`` (configurable; or a request parameter of that name),
attributes from ``x-attr-<name>``. When the request names no version the flag decides; a version
pins it if the flag allows. The response's ``model_version`` is the version that served, and its
parameters (and trailing metadata) carry the flag, variant, reason and fallback.

``ModelInfer`` is registered bytes-in, bytes-out. In front of Triton the request is never parsed:
the routing header is read off the wire, the target appended, and Triton's reply returned with the
assignment parameters appended (:mod:`sidecar.wire`). The embedded engine needs the tensors, so
there the request is parsed as usual.
"""

from __future__ import annotations

import functools
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as kserve

import sidecar
from flags.schema import Scalar
from flags.store import FlagStore
from sidecar import wire
from sidecar.backends.base import RawInferenceBackend
from sidecar.errors import InvalidRequest
from sidecar.grpc_errors import grpc_errors
from sidecar.routing import MessageCall, RawCall, Routed, Router, set_parameter
from sidecar.subjects import SubjectRules, subject_from_metadata
from sidecar.telemetry import metadata_dict
from sidecar.tensors import check_inputs, check_message

Context: TypeAlias = Any  # grpc.aio.ServicerContext (grpc ships no type information)
SERVICE = "inference.GRPCInferenceService"


class KServeFacade:
    def __init__(self, router: Router, store: FlagStore, rules: SubjectRules) -> None:
        self._router = router
        self._store = store
        self._rules = rules
        # Decided once: a runtime-checkable isinstance costs microseconds per request.
        self._raw = isinstance(router.backend, RawInferenceBackend)

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
            },
        )

    def _backend_target(self, model: str, version: str) -> tuple[str, str]:
        """Which backend model/version answers metadata questions about ``model``."""
        flag = self._store.snapshot.get(model)
        if flag is None:
            return model, version
        default = flag.spec.variants[flag.spec.default_variant]
        return default.model, version or default.version

    async def ServerLive(
        self, request: kserve.ServerLiveRequest, context: Context
    ) -> kserve.ServerLiveResponse:
        return kserve.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: kserve.ServerReadyRequest, context: Context
    ) -> kserve.ServerReadyResponse:
        ready = self._store.health.loaded and await self._router.backend.server_ready()
        return kserve.ServerReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: kserve.ServerMetadataRequest, context: Context
    ) -> kserve.ServerMetadataResponse:
        return kserve.ServerMetadataResponse(
            name="trafficsplit", version=sidecar.__version__, extensions=[]
        )

    @grpc_errors
    async def ModelReady(
        self, request: kserve.ModelReadyRequest, context: Context
    ) -> kserve.ModelReadyResponse:
        model, version = self._backend_target(request.name, request.version)
        return kserve.ModelReadyResponse(
            ready=await self._router.backend.model_ready(model, version)
        )

    @grpc_errors
    async def ModelMetadata(
        self, request: kserve.ModelMetadataRequest, context: Context
    ) -> kserve.ModelMetadataResponse:
        model, version = self._backend_target(request.name, request.version)
        response = await self._router.backend.model_metadata(model, version)
        response.name = request.name
        return response

    @grpc_errors
    async def ModelConfig(
        self, request: kserve.ModelConfigRequest, context: Context
    ) -> kserve.ModelConfigResponse:
        model, version = self._backend_target(request.name, request.version)
        return await self._router.backend.model_config(model, version)

    @grpc_errors
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
            context.set_trailing_metadata(_trailing(routed))
            plan = routed.plan
            return bytes(routed.response) + _response_suffix(
                plan.flag, plan.variant, plan.reason, plan.revision, routed.fallback
            )
        try:
            request = kserve.ModelInferRequest.FromString(raw)
        except DecodeError as exc:  # e.g. invalid UTF-8 in a string field
            raise InvalidRequest(f"malformed ModelInferRequest: {exc}") from exc
        check_message(request)
        routed = await self._router.infer(
            MessageCall(request), subject, timeout=timeout, rpc="ModelInfer", metadata=invocation
        )
        response: kserve.ModelInferResponse = routed.response
        response.model_version = routed.served_version
        for key, value in _parameters(routed).items():
            set_parameter(response.parameters[key], value)
        context.set_trailing_metadata(_trailing(routed))
        return bytes(response.SerializeToString())


@functools.lru_cache(maxsize=4096)
def _response_suffix(flag: str, variant: str, reason: str, revision: int, fallback: bool) -> bytes:
    """The assignment as response parameters, appended to Triton's reply (constant per cohort)."""
    return wire.parameter_entries(
        wire.RESPONSE_PARAMETERS, _assignment(flag, variant, reason, revision, fallback)
    )


def _parameters(routed: Routed) -> dict[str, Scalar]:
    plan = routed.plan
    return _assignment(plan.flag, plan.variant, plan.reason, plan.revision, routed.fallback)


def _assignment(
    flag: str, variant: str, reason: str, revision: int, fallback: bool
) -> dict[str, Scalar]:
    """The response parameters that tell the caller its assignment (docs/api.md)."""
    return {
        "trafficsplit.flag": flag,
        "trafficsplit.variant": variant,
        "trafficsplit.reason": reason,
        "trafficsplit.fallback": fallback,
        "trafficsplit.flag_revision": revision,
    }


def _trailing(routed: Routed) -> tuple[tuple[str, str], ...]:
    return (
        ("x-trafficsplit-flag", routed.plan.flag),
        ("x-trafficsplit-variant", routed.plan.variant),
        ("x-trafficsplit-reason", routed.plan.reason),
        ("x-trafficsplit-model-version", routed.served_version),
        ("x-trafficsplit-fallback", "true" if routed.fallback else "false"),
    )
