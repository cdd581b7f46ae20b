"""The standard KServe-v2 ``inference.GRPCInferenceService``, so unmodified Triton clients work.

The user id comes from metadata ``x-user-id`` (configurable; or a request parameter of that name),
attributes from ``x-attr-<name>``. When the request names no version the flag decides; a version
pins it if the flag allows. The response's ``model_version`` is the version that served, and its
parameters (and trailing metadata) carry the flag, variant, reason and fallback.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from tritonclient.grpc import service_pb2 as kserve
from tritonclient.grpc import service_pb2_grpc

import sidecar
from flags.store import FlagStore
from sidecar.grpc_errors import grpc_errors
from sidecar.routing import Routed, Router
from sidecar.subjects import SubjectRules, subject_from_metadata
from sidecar.telemetry import metadata_dict
from sidecar.tensors import check_inputs

Context: TypeAlias = Any  # grpc.aio.ServicerContext (grpc ships no type information)
MAX_TENSOR_ELEMENTS = 64 * 1024 * 1024


class KServeFacade(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, router: Router, store: FlagStore, rules: SubjectRules) -> None:
        self._router = router
        self._store = store
        self._rules = rules

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
    async def ModelInfer(
        self, request: kserve.ModelInferRequest, context: Context
    ) -> kserve.ModelInferResponse:
        invocation = context.invocation_metadata() or ()
        metadata = metadata_dict(invocation)
        param = request.parameters.get(self._rules.user_id_header)
        subject = subject_from_metadata(
            metadata, self._rules, parameter_user_id=param.string_param if param is not None else ""
        )
        check_inputs(request, max_elements=MAX_TENSOR_ELEMENTS)
        routed = await self._router.infer(
            request,
            subject,
            timeout=context.time_remaining(),
            rpc="ModelInfer",
            metadata=invocation,
        )
        response = routed.response
        _describe(response, routed)
        context.set_trailing_metadata(_trailing(routed))
        return response


def _describe(response: kserve.ModelInferResponse, routed: Routed) -> None:
    plan = routed.plan
    response.model_version = routed.served_version
    params = response.parameters
    params["trafficsplit.flag"].string_param = plan.flag
    params["trafficsplit.variant"].string_param = plan.variant
    params["trafficsplit.reason"].string_param = plan.reason
    params["trafficsplit.fallback"].bool_param = routed.fallback
    params["trafficsplit.flag_revision"].int64_param = plan.revision


def _trailing(routed: Routed) -> tuple[tuple[str, str], ...]:
    return (
        ("x-trafficsplit-flag", routed.plan.flag),
        ("x-trafficsplit-variant", routed.plan.variant),
        ("x-trafficsplit-reason", routed.plan.reason),
        ("x-trafficsplit-model-version", routed.served_version),
        ("x-trafficsplit-fallback", "true" if routed.fallback else "false"),
    )
