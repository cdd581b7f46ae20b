"""Fuzz every gRPC method the sidecar serves: random bytes, random messages, mutated valid ones.

The methods are enumerated from the services' descriptors (KServe-v2, the native API, health,
reflection), and the list is checked against what the sidecar itself lists through reflection, so
a service added later fails this test until it is fuzzed too. Whatever arrives, the sidecar must
answer with a deliberate status (never UNKNOWN or INTERNAL, which mean an unhandled error), print
no traceback, and keep serving.

One real sidecar process (embedded engine, bundled demo flag) for the module; its stderr is
checked at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from faultload import digits_request
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protofuzz import wire_payloads
from tritonclient.grpc import service_pb2 as kserve

from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2 as pb
from sidecar.launcher import SidecarProcess

SERVED_FILES = (kserve.DESCRIPTOR, pb.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)
METHODS = [m for f in SERVED_FILES for s in f.services_by_name.values() for m in s.methods]
UNARY = [m for m in METHODS if not (m.client_streaming or m.server_streaming)]
STREAMING = [m for m in METHODS if m.client_streaming or m.server_streaming]
# UNKNOWN / INTERNAL: an exception nobody translated. DEADLINE_EXCEEDED on a unary call: a hang.
BUGS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
CALL_TIMEOUT_S = 5.0
PIXELS_REQUEST = digits_request()

# A valid request per method where one is more than an empty message: mutations start there.
SEEDS: dict[str, bytes] = {
    "ModelInfer": PIXELS_REQUEST.SerializeToString(),
    "Infer": pb.InferRequest(
        subject=pb.Subject(id="user-1", attributes={"tier": "pro"}),
        model="digits",
        inputs=[
            pb.Tensor(
                name="pixels",
                datatype="FP32",
                shape=[1, 64],
                data=PIXELS_REQUEST.raw_input_contents[0],
            )
        ],
    ).SerializeToString(),
    "Assign": pb.AssignRequest(subject=pb.Subject(id="user-1"), model="digits").SerializeToString(),
    "ModelMetadata": kserve.ModelMetadataRequest(name="digits").SerializeToString(),
    "ModelReady": kserve.ModelReadyRequest(name="digits", version="1").SerializeToString(),
    "ModelConfig": kserve.ModelConfigRequest(name="digits").SerializeToString(),
    "ModelStatistics": kserve.ModelStatisticsRequest(name="digits").SerializeToString(),
    "Check": health_pb2.HealthCheckRequest(service="").SerializeToString(),
}
metadata_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=24)
metadata = st.tuples(
    st.one_of(st.just("user-1"), metadata_values),
    st.one_of(st.just(""), metadata_values),
).map(lambda m: (("x-user-id", m[0]),) + ((("x-attr-tier", m[1]),) if m[1] else ()))


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    log = tmp_path_factory.mktemp("fuzz") / "sidecar.log"
    with SidecarProcess(["--max-message-bytes", str(1 << 20)], stderr_path=log) as process:
        yield process
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")


@pytest.fixture(scope="module")
def channel(sidecar: SidecarProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(sidecar.address) as ch:
        yield ch


def test_every_served_service_is_fuzzed(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [reply] = list(stub.ServerReflectionInfo(iter([request]), timeout=CALL_TIMEOUT_S))
    served = {s.name for s in reply.list_services_response.service}
    fuzzed = {m.containing_service.full_name for m in METHODS}
    assert served == fuzzed, "add the new service's file descriptor to SERVED_FILES"


def test_a_method_the_library_lacks_is_unimplemented(channel: grpc.Channel) -> None:
    """grpc_health's servicer has no Health/List: UNIMPLEMENTED, not INTERNAL and a traceback."""
    call = channel.unary_unary("/grpc.health.v1.Health/List")
    with pytest.raises(grpc.RpcError) as caught:
        call(b"", timeout=CALL_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("method", UNARY, ids=_path)
def test_unary_method_survives_fuzzing(
    sidecar: SidecarProcess, channel: grpc.Channel, method: MethodDescriptor
) -> None:
    call = channel.unary_unary(_path(method))
    seed = SEEDS.get(method.name, b"")

    @settings(
        max_examples=100,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(payload=wire_payloads(method.input_type, seed), headers=metadata)
    def fuzz(payload: bytes, headers: tuple[tuple[str, str], ...]) -> None:
        try:
            call(payload, timeout=CALL_TIMEOUT_S, metadata=headers)
        except grpc.RpcError as exc:
            assert exc.code() not in BUGS | {grpc.StatusCode.DEADLINE_EXCEEDED}, (
                f"{_path(method)} answered {exc.code().name}: {exc.details()}"
            )

    fuzz()
    _still_serving(sidecar, channel)


@pytest.mark.parametrize("method", STREAMING, ids=_path)
def test_streaming_method_survives_fuzzing(
    sidecar: SidecarProcess, channel: grpc.Channel, method: MethodDescriptor
) -> None:
    """Streams: the first answer (or the error) is deliberate; a stream that stays open waiting
    for more (health Watch does) is fine."""
    path = _path(method)
    call: Any = (
        channel.stream_stream(path) if method.client_streaming else channel.unary_stream(path)
    )

    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(payload=wire_payloads(method.input_type, SEEDS.get(method.name, b"")))
    def fuzz(payload: bytes) -> None:
        body = iter([payload]) if method.client_streaming else payload
        responses = call(body, timeout=1.0, metadata=(("x-user-id", "user-1"),))
        try:
            next(iter(responses), None)
        except grpc.RpcError as exc:
            assert exc.code() not in BUGS, f"{path} answered {exc.code().name}: {exc.details()}"
        finally:
            responses.cancel()

    fuzz()
    _still_serving(sidecar, channel)


def _still_serving(sidecar: SidecarProcess, channel: grpc.Channel) -> None:
    assert sidecar.proc is not None and sidecar.proc.poll() is None, "the sidecar died"
    infer = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=kserve.ModelInferRequest.SerializeToString,
        response_deserializer=kserve.ModelInferResponse.FromString,
    )
    reply = infer(PIXELS_REQUEST, timeout=CALL_TIMEOUT_S, metadata=(("x-user-id", "user-1"),))
    assert reply.model_name == "digits" and len(reply.outputs) > 0
