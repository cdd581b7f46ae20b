"""The native ``trafficsplit.v1.TrafficSplit`` service: typed subject in, typed assignment out."""

from __future__ import annotations

from typing import Any, TypeAlias

from tritonclient.grpc import service_pb2 as kserve

from flags import Subject
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2 as pb
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2_grpc as pb_grpc
from sidecar.calls import MessageCall
from sidecar.errors import InvalidRequest
from sidecar.events import EventRecording, EventsOff
from sidecar.outcome import Assignment
from sidecar.routing import Router
from sidecar.subjects import SubjectRules, checked_subject
from sidecar.tensors import check_message

Context: TypeAlias = Any  # grpc.aio.ServicerContext (grpc ships no type information)


class NativeService(pb_grpc.TrafficSplitServicer):
    def __init__(
        self, router: Router, rules: SubjectRules, events: EventRecording | None = None
    ) -> None:
        self._router = router
        self._rules = rules
        self._events = events

    def _subject(self, subject: pb.Subject) -> Subject:
        return checked_subject(
            subject.id, dict(subject.attributes), self._rules, where="`subject.id`"
        )

    async def Infer(self, request: pb.InferRequest, context: Context) -> pb.InferResponse:
        if not request.model:
            raise InvalidRequest("`model` is required: the model name the app asks for")
        subject = self._subject(request.subject)
        backend_request = kserve.ModelInferRequest(
            model_name=request.model, model_version=request.version, id=request.request_id
        )
        for tensor in request.inputs:
            entry = backend_request.inputs.add()
            entry.name, entry.datatype = tensor.name, tensor.datatype
            entry.shape.extend(tensor.shape)
            backend_request.raw_input_contents.append(tensor.data)
        for name in request.outputs:
            backend_request.outputs.add().name = name
        check_message(backend_request)
        routed = await self._router.infer(
            MessageCall(backend_request),
            subject,
            timeout=context.time_remaining(),
            rpc="Infer",
            metadata=context.invocation_metadata() or (),
        )
        response = routed.response
        outputs = [
            pb.Tensor(name=o.name, datatype=o.datatype, shape=list(o.shape), data=raw)
            for o, raw in zip(response.outputs, response.raw_output_contents, strict=False)
        ]
        return pb.InferResponse(
            assignment=to_proto(routed.assignment),
            outputs=outputs,
            request_id=response.id or request.request_id,
        )

    async def Assign(self, request: pb.AssignRequest, context: Context) -> pb.AssignResponse:
        if not request.model:
            raise InvalidRequest("`model` is required: the model name the app asks for")
        assigned = self._router.assign(
            request.model,
            self._subject(request.subject),
            metadata=context.invocation_metadata() or (),
        )
        return pb.AssignResponse(assignment=to_proto(assigned))

    async def Track(self, request: pb.TrackRequest, context: Context) -> pb.TrackResponse:
        if self._events is None:
            raise EventsOff("this sidecar records no events")
        outcome = self._events.track(
            flag=request.flag,
            user_id=request.user_id,
            metric=request.metric,
            value=request.value,
            time_ms=request.time_unix_ms,
            idempotency_key=request.idempotency_key,
        )
        return pb.TrackResponse(event_id=outcome.event_id)


def to_proto(a: Assignment) -> pb.Assignment:
    """The native rendering of an assignment (the other surfaces are in sidecar.render)."""
    return pb.Assignment(
        flag=a.flag,
        variant=a.variant,
        model=a.served.model,
        model_version=a.served_version,
        reason=a.reason,
        fallback=a.fallback is not None,
        flag_revision=a.revision,
        rule=a.plan.rule or "",
        exposed=a.exposed,
        parameters={k: str(v) for k, v in a.served.parameters.items()},
        membership=str(a.membership),
        fallback_cause=str(a.fallback or ""),
    )
