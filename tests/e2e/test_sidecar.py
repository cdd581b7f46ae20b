"""The sidecar end to end: real redis-server, real tritonserver (or embedded onnxruntime), real
gRPC clients (an unmodified tritonclient and the native stub), flags changed with flagctl, spans
received by a real OTLP receiver. The same suite runs against both backends where it applies."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from otlp_receiver import OtlpReceiver
from servers import RedisServer, wait_until
from support import ROOT, digits_flag, make_request, scrape
from tritonclient.grpc import service_pb2 as kserve
from tritonclient.utils import InferenceServerException

from flags.admin import FlagAdmin
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from flags.schema import parse_flag
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2 as pb
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2_grpc as pb_grpc
from sidecar.launcher import SidecarProcess

pytestmark = [pytest.mark.redis]

GOLDEN = np.load(ROOT / "triton_models" / "digits" / "golden.npz")
PIXELS = GOLDEN["pixels"].astype(np.float32)
CANDIDATE_SHARE = 30.0
SERVER_KIND, CLIENT_KIND = 2, 3  # opentelemetry.proto Span.SpanKind


def base_flag(**overrides: Any) -> dict[str, Any]:
    return digits_flag(
        **overrides,
        rules=[{"name": "dogfood", "users": ["alice@example.com"], "serve": "candidate"}],
        allocation={
            "coverage": 100,
            "split": {"control": 100 - CANDIDATE_SHARE, "candidate": CANDIDATE_SHARE},
        },
        shadow=None,
    )


@dataclass
class Stack:
    kind: str  # "embedded" | "triton"
    sidecar: SidecarProcess
    redis: RedisServer
    prefix: str
    service: str
    client: triton.InferenceServerClient
    channel: grpc.Channel

    @property
    def native(self) -> pb_grpc.TrafficSplitStub:
        return pb_grpc.TrafficSplitStub(self.channel)

    def admin(self) -> FlagAdmin:
        return FlagAdmin(sync_client(self.redis.url), keys=RedisKeys(self.prefix), actor="e2e")

    def flagctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "flags.cli",
                "--redis-url",
                self.redis.url,
                "--prefix",
                self.prefix,
                "--actor",
                "e2e",
                *args,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result

    def infer(self, user: str, sample: int = 0, **kwargs: Any) -> Any:
        tensor = triton.InferInput("pixels", [1, 64], "FP32")
        tensor.set_data_from_numpy(PIXELS[sample : sample + 1])
        headers = {"x-user-id": user} if user else {}
        return self.client.infer("digits", [tensor], headers=headers, **kwargs).get_response()

    def reset_flag(self) -> int:
        """Put the base flag back and wait until the sidecar serves its new revision."""
        stored = self.admin().apply(parse_flag(base_flag()), reason="test reset", force=True)
        wait_until(
            lambda: revision_of(self.infer("probe")) == stored.revision,
            timeout=5,
            what=f"revision {stored.revision} served",
        )
        return stored.revision


def revision_of(response: Any) -> int:
    return int(response.parameters["trafficsplit.flag_revision"].int64_param)


def variant_of(response: Any) -> str:
    return str(response.parameters["trafficsplit.variant"].string_param)


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module", params=["embedded", "triton"])
def stack(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    otlp: OtlpReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    kind = request.param
    prefix = f"e2e-{kind}-{uuid.uuid4().hex[:8]}:"
    FlagAdmin(sync_client(redis_server.url), keys=RedisKeys(prefix), actor="e2e").apply(
        parse_flag(base_flag()), reason="e2e setup"
    )
    args = [
        "--redis-url",
        redis_server.url,
        "--redis-prefix",
        prefix,
        "--max-message-bytes",
        str(1 << 20),
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    if kind == "triton":
        args += ["--triton-url", request.getfixturevalue("triton_server").grpc_url]
    service = f"sidecar-{kind}-{uuid.uuid4().hex[:6]}"
    log = tmp_path_factory.mktemp(f"sidecar-{kind}") / "sidecar.log"
    with SidecarProcess(args, env=otlp.exporter_env(service), stderr_path=log) as sidecar:
        client = triton.InferenceServerClient(sidecar.address)
        channel = grpc.insecure_channel(sidecar.address)
        yield Stack(kind, sidecar, redis_server, prefix, service, client, channel)
        client.close()
        channel.close()


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    stack.reset_flag()
    return stack


def test_unmodified_tritonclient_gets_prediction_and_assignment(fresh: Stack) -> None:
    response = fresh.infer("alice@example.com", sample=3)
    assert response.model_name == "digits"
    assert response.model_version == "2"  # alice is on the dogfood allow-list
    assert variant_of(response) == "candidate"
    assert response.parameters["trafficsplit.reason"].string_param == "TARGETING_MATCH"
    assert response.parameters["trafficsplit.fallback"].bool_param is False
    labels = np.frombuffer(
        response.raw_output_contents[[o.name for o in response.outputs].index("label")], np.int64
    )
    assert labels[0] == GOLDEN["labels"][3]
    assert fresh.client.is_server_ready() and fresh.client.is_model_ready("digits")
    assert fresh.client.get_model_metadata("digits").inputs[0].name == "pixels"


def test_native_stub_infer_and_assign_agree_with_the_facade(fresh: Stack) -> None:
    request = pb.InferRequest(
        subject=pb.Subject(id="user-17", attributes={"tier": "free"}),
        model="digits",
        inputs=[
            pb.Tensor(name="pixels", datatype="FP32", shape=[1, 64], data=PIXELS[5:6].tobytes())
        ],
        outputs=["label"],
    )
    reply = fresh.native.Infer(request, timeout=10)
    facade = fresh.infer("user-17")
    assert reply.assignment.variant == variant_of(facade)
    assert reply.assignment.model_version == facade.model_version
    assert reply.assignment.flag == "digits" and reply.assignment.exposed
    assert [o.name for o in reply.outputs] == ["label"]
    assert np.frombuffer(reply.outputs[0].data, np.int64)[0] == GOLDEN["labels"][5]
    assigned = fresh.native.Assign(
        pb.AssignRequest(subject=pb.Subject(id="user-17"), model="digits"), timeout=10
    )
    assert assigned.assignment.variant == reply.assignment.variant
    assert assigned.assignment.model_version == reply.assignment.model_version


def test_split_over_2000_users_and_stickiness(fresh: Stack) -> None:
    versions = {
        f"user-{i}": fresh.infer(f"user-{i}", sample=i % 50).model_version for i in range(2000)
    }
    share = sum(v == "2" for v in versions.values()) / len(versions) * 100
    assert abs(share - CANDIDATE_SHARE) <= 3, share
    for user in list(versions)[:200]:
        assert fresh.infer(user).model_version == versions[user]


def test_flagctl_ramp_applies_within_a_second_and_keeps_treated_users(fresh: Stack) -> None:
    users = [f"ramp-{i}" for i in range(400)]
    before = {u: variant_of(fresh.infer(u)) for u in users}
    fresh.flagctl("ramp", "digits", "candidate", "60", "--reason", "e2e ramp")
    written = time.monotonic()
    target = fresh.admin().get("digits").revision
    wait_until(
        lambda: revision_of(fresh.infer("probe")) == target, timeout=1.0, what="the ramp served"
    )
    assert time.monotonic() - written < 1.0
    after = {u: variant_of(fresh.infer(u)) for u in users}
    assert all(after[u] == "candidate" for u in users if before[u] == "candidate")
    assert sum(v == "candidate" for v in after.values()) > sum(
        v == "candidate" for v in before.values()
    )


def test_flagctl_rollback_sends_everyone_to_version_1_within_a_second(fresh: Stack) -> None:
    candidates = [u for u in (f"rb-{i}" for i in range(300)) if fresh.infer(u).model_version == "2"]
    assert candidates
    fresh.flagctl("rollback", "digits", "--reason", "e2e rollback")
    written = time.monotonic()
    wait_until(
        lambda: fresh.infer(candidates[0]).model_version == "1", timeout=1.0, what="rollback served"
    )
    assert time.monotonic() - written < 1.0
    assert {fresh.infer(u).model_version for u in [*candidates, "alice@example.com"]} == {"1"}
    assert fresh.infer(candidates[0]).parameters["trafficsplit.reason"].string_param == "DISABLED"


def test_spans_carry_flag_cohort_and_served_version(fresh: Stack, otlp: OtlpReceiver) -> None:
    trace_id = uuid.uuid4().hex
    tensor = triton.InferInput("pixels", [1, 64], "FP32")
    tensor.set_data_from_numpy(PIXELS[:1])
    fresh.client.infer(
        "digits",
        [tensor],
        headers={"x-user-id": "alice@example.com", "traceparent": f"00-{trace_id}-{'1' * 16}-01"},
    )

    def our_spans() -> list[Any]:
        return [s for s in otlp.spans(fresh.service) if s.trace_id == trace_id]

    spans = wait_until(
        lambda: len(our_spans()) >= 2 and our_spans(), timeout=10, what="spans exported"
    )
    server = next(s for s in spans if s.kind == SERVER_KIND)
    client = next(s for s in spans if s.kind == CLIENT_KIND)
    assert server.parent_span_id == "1" * 16  # continues the caller's trace
    assert client.parent_span_id == server.span_id
    expected = {
        "feature_flag.key": "digits",
        "feature_flag.result.variant": "candidate",
        "feature_flag.provider.name": "trafficsplit",
        "trafficsplit.cohort": "candidate",
        "trafficsplit.reason": "TARGETING_MATCH",
        "trafficsplit.fallback": False,
        "ml.model.name": "digits",
        "ml.model.version": "2",
    }
    assert {k: server.attributes.get(k) for k in expected} == expected
    assert "feature_flag.context.id" not in server.attributes  # no raw user ids by default
    assert client.attributes["ml.model.version"] == "2"
    assert client.attributes["trafficsplit.backend"] == (
        "triton" if fresh.kind == "triton" else "onnxruntime"
    )


def _status(call: Any) -> tuple[grpc.StatusCode | str, str]:
    try:
        call()
    except InferenceServerException as exc:
        return str(exc.status()), str(exc.message())
    except grpc.RpcError as exc:
        return exc.code(), str(exc.details())
    raise AssertionError("the request should have failed")


def test_bad_input_gets_a_clear_status_and_the_sidecar_keeps_serving(fresh: Stack) -> None:
    def infer_with(
        name: str,
        shape: list[int],
        dtype: str,
        data: np.ndarray,
        user: str = "u1",
        model: str = "digits",
        version: str = "",
    ) -> Any:
        tensor = triton.InferInput(name, shape, dtype)
        tensor.set_data_from_numpy(data)
        return fresh.client.infer(
            model, [tensor], model_version=version, headers={"x-user-id": user} if user else {}
        )

    cases = {
        "no user id": (
            lambda: infer_with("pixels", [1, 64], "FP32", PIXELS[:1], user=""),
            "StatusCode.INVALID_ARGUMENT",
            "no user id: send it in the `x-user-id` metadata",
        ),
        "model without a flag": (  # fail safe: the backend must not pick its newest version
            lambda: infer_with("pixels", [1, 64], "FP32", PIXELS[:1], model="nope"),
            "StatusCode.FAILED_PRECONDITION",
            "model 'nope' has no flag",
        ),
        "unknown model, version pinned": (
            lambda: infer_with("pixels", [1, 64], "FP32", PIXELS[:1], model="nope", version="1"),
            "StatusCode.NOT_FOUND",
            "nope",
        ),
        "wrong dtype": (
            lambda: infer_with("pixels", [1, 64], "INT32", PIXELS[:1].astype(np.int32)),
            "StatusCode.INVALID_ARGUMENT",
            "pixels",
        ),
        "wrong shape": (
            lambda: infer_with("pixels", [1, 63], "FP32", PIXELS[:1, :63]),
            "StatusCode.INVALID_ARGUMENT",
            "pixels",
        ),
        "too long user id": (
            lambda: infer_with("pixels", [1, 64], "FP32", PIXELS[:1], user="u" * 300),
            "StatusCode.INVALID_ARGUMENT",
            "the limit is 256",
        ),
        "oversized message": (
            lambda: infer_with("pixels", [5000, 64], "FP32", np.zeros((5000, 64), np.float32)),
            "StatusCode.RESOURCE_EXHAUSTED",
            "",
        ),
    }
    for name, (call, code, fragment) in cases.items():
        got_code, message = _status(call)
        assert got_code == code, (name, got_code, message)
        assert fragment in message, (name, message)
    bad_bytes = pb.InferRequest(
        subject=pb.Subject(id="u1"),
        model="digits",
        inputs=[pb.Tensor(name="pixels", datatype="FP32", shape=[1, 64], data=b"\x00" * 10)],
    )
    code, message = _status(lambda: fresh.native.Infer(bad_bytes, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "needs 256" in message
    code, message = _status(
        lambda: fresh.native.Infer(pb.InferRequest(subject=pb.Subject(id="u1")), timeout=10)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "`model` is required" in message
    assert fresh.infer("alice@example.com").model_version == "2"  # still serving


# ModelInfer bytes that are not a valid ModelInferRequest, each with what the caller is told.
_GOOD_BYTES = make_request(PIXELS[:1], version="").SerializeToString()  # the flag picks
MALFORMED_INFER = {
    "truncated": (_GOOD_BYTES[:-10], "runs past the end"),
    "field number 0": (_GOOD_BYTES + b"\x00\x00", "field number 0"),
    # Accepted by the previous wire reader: it never looked inside non-string parameter values.
    "field 0 inside a bool parameter": (
        _GOOD_BYTES + bytes.fromhex("2209 0a0161 1204 0801 0000".replace(" ", "")),
        "wire format was corrupt",
    ),
    "id not UTF-8": (_GOOD_BYTES + b"\x1a\x01\xff", "bad utf-8"),
    "6-byte tag": (_GOOD_BYTES + b"\xca\x80\x80\x80\x80\x00\x00", "longer than 5 bytes"),
    "end of group without a start": (_GOOD_BYTES + b"\x0c", "without a start"),
}
# Valid for the sidecar's (upb) parser, refused by Triton's C++ parser: "Unable to parse request".
TRITON_REFUSES = (_GOOD_BYTES + b"\x4b\x00\x00\x4c", "triton could not parse")


def test_malformed_infer_bytes_are_the_callers_fault_and_leave_the_circuit_closed(
    fresh: Stack,
) -> None:
    infer = fresh.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    candidate = (("x-user-id", "alice@example.com"),)  # on the dogfood list: the candidate
    cases = list(MALFORMED_INFER.values())
    if fresh.kind == "triton":
        cases.append(TRITON_REFUSES)
    for attempt in range(21):  # several times the breaker's threshold of consecutive failures
        raw, reason = cases[attempt % len(cases)]
        code, message = _status(lambda raw=raw: infer(raw, metadata=candidate, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (reason, code, message)
        assert "malformed" in message and reason in message.lower(), message
        assert "\n" not in message and "Traceback" not in message
    response = kserve.ModelInferResponse.FromString(
        infer(_GOOD_BYTES, metadata=candidate, timeout=10)
    )
    assert response.model_version == "2"  # still the candidate: no circuit opened
    assert response.parameters["trafficsplit.fallback"].bool_param is False
    assert variant_of(response) == "candidate"


def test_explicit_version_pins_it(fresh: Stack) -> None:
    response = fresh.infer("user-1", model_version="2")
    assert response.model_version == "2"
    assert response.parameters["trafficsplit.reason"].string_param == "PINNED"


def test_health_and_reflection(stack: Stack) -> None:
    health = health_pb2_grpc.HealthStub(stack.channel)
    for service in ("", "inference.GRPCInferenceService", "trafficsplit.v1.TrafficSplit"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(stack.channel)
    replies = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {
        "inference.GRPCInferenceService",
        "trafficsplit.v1.TrafficSplit",
        "grpc.health.v1.Health",
    } <= names


# Triton-specific failure handling.
@pytest.mark.triton
def test_version_2_missing_in_triton_falls_back_to_version_1(
    redis_server: RedisServer, triton_v1_only: Any, tmp_path: Path
) -> None:
    prefix = f"fb-{uuid.uuid4().hex[:8]}:"
    FlagAdmin(sync_client(redis_server.url), keys=RedisKeys(prefix)).apply(
        parse_flag(base_flag()), reason="fb"
    )
    args = [
        "--redis-url",
        redis_server.url,
        "--redis-prefix",
        prefix,
        "--triton-url",
        triton_v1_only.grpc_url,
    ]
    with SidecarProcess(args, stderr_path=tmp_path / "sidecar.log") as sidecar:
        client = triton.InferenceServerClient(sidecar.address)
        tensor = triton.InferInput("pixels", [1, 64], "FP32")
        tensor.set_data_from_numpy(PIXELS[:1])
        responses = [
            client.infer("digits", [tensor], headers={"x-user-id": f"user-{i}"}).get_response()
            for i in range(200)
        ]
        client.close()
    assert {r.model_version for r in responses} == {"1"}
    candidates = [r for r in responses if variant_of(r) == "candidate"]
    assert candidates and all(r.parameters["trafficsplit.fallback"].bool_param for r in candidates)
    assert not any(
        r.parameters["trafficsplit.fallback"].bool_param
        for r in responses
        if variant_of(r) == "control"
    )


def test_triton_down_is_unavailable_naming_the_backend(tmp_path: Path) -> None:
    with SidecarProcess(
        ["--triton-url", "127.0.0.1:1"], stderr_path=tmp_path / "sidecar.log"
    ) as sidecar:
        client = triton.InferenceServerClient(sidecar.address)
        tensor = triton.InferInput("pixels", [1, 64], "FP32")
        tensor.set_data_from_numpy(PIXELS[:1])
        code, message = _status(
            lambda: client.infer("digits", [tensor], headers={"x-user-id": "u1"})
        )
        client.close()
    assert code == "StatusCode.UNAVAILABLE"
    assert "triton" in message and "127.0.0.1:1" in message


def test_anonymous_traffic_gets_the_default_when_allowed(tmp_path: Path) -> None:
    with SidecarProcess(["--allow-anonymous"], stderr_path=tmp_path / "sidecar.log") as sidecar:
        client = triton.InferenceServerClient(sidecar.address)
        tensor = triton.InferInput("pixels", [1, 64], "FP32")
        tensor.set_data_from_numpy(PIXELS[:1])
        response = client.infer("digits", [tensor]).get_response()
        client.close()
    assert response.model_version == "1"
    assert response.parameters["trafficsplit.reason"].string_param == "ANONYMOUS"


def test_sigterm_drains_and_exits_cleanly(tmp_path: Path) -> None:
    sidecar = SidecarProcess([], stderr_path=tmp_path / "sidecar.log").start()
    assert sidecar.stop() == 0
    assert "shutting down" in (tmp_path / "sidecar.log").read_text()


def test_metrics_count_requests_by_cohort_and_served_version(fresh: Stack) -> None:
    def requests(membership: str, variant: str, version: str, outcome: str, status: str) -> Any:
        labels = {"flag": "digits", "variant": variant, "membership": membership,
                  "model": "digits", "version": version, "outcome": outcome, "status": status}  # fmt: skip
        return ("trafficsplit_requests_total", tuple(sorted(labels.items())))

    targeted = requests("targeted", "candidate", "2", "served", "OK")
    pinned = requests("pinned", "control", "1", "served", "OK")
    failed = requests("targeted", "candidate", "2", "failed", "INVALID_ARGUMENT")
    failed_timed = (
        "trafficsplit_request_duration_seconds_count",
        (("flag", "digits"), ("membership", "targeted"), ("outcome", "failed"),
         ("variant", "candidate")),
    )  # fmt: skip
    before = scrape(fresh.sidecar.metrics_url)
    for _ in range(3):
        fresh.infer("alice@example.com")  # allow-listed: targeted, not exposed
    tensor = triton.InferInput("pixels", [1, 64], "FP32").set_data_from_numpy(PIXELS[:1])
    fresh.client.infer("digits", [tensor], model_version="1", headers={"x-user-id": "u-pin"})
    with pytest.raises(InferenceServerException):
        fresh.client.infer(
            "digits",
            [triton.InferInput("pixels", [1, 63], "FP32").set_data_from_numpy(PIXELS[:1, :63])],
            headers={"x-user-id": "alice@example.com"},
        )
    metrics = scrape(fresh.sidecar.metrics_url)
    assert metrics[targeted] == before.get(targeted, 0.0) + 3
    assert metrics[pinned] == before.get(pinned, 0.0) + 1  # a pin is never an experiment group
    assert metrics[failed] == before.get(failed, 0.0) + 1
    assert metrics[failed_timed] == before.get(failed_timed, 0.0) + 1  # failures are timed too
    attempts = (
        "trafficsplit_attempts_total",
        (("backend", "onnxruntime" if fresh.kind == "embedded" else "triton"), ("flag", "digits"), ("membership", "targeted"),
         ("model", "digits"), ("result", "OK"), ("version", "2")),
    )  # fmt: skip
    assert metrics[attempts] >= 3
    revision = fresh.admin().get("digits").revision
    assert metrics[("trafficsplit_flag_revision", (("flag", "digits"),))] == revision
    assert metrics[("trafficsplit_flag_store_stale", ())] == 0


def test_redis_outage_while_serving(fresh_redis: RedisServer, tmp_path: Path) -> None:
    """Redis killed: requests keep their cohorts and metrics say stale; Redis back: changes apply."""
    prefix = "outage:"
    admin = FlagAdmin(sync_client(fresh_redis.url), keys=RedisKeys(prefix))
    admin.apply(parse_flag(base_flag()), reason="outage test")
    args = [
        "--redis-url",
        fresh_redis.url,
        "--redis-prefix",
        prefix,
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    with SidecarProcess(args, stderr_path=tmp_path / "sidecar.log") as sidecar:
        client = triton.InferenceServerClient(sidecar.address)
        tensor = triton.InferInput("pixels", [1, 64], "FP32")
        tensor.set_data_from_numpy(PIXELS[:1])

        def version(user: str) -> str:
            response = client.infer("digits", [tensor], headers={"x-user-id": user}).get_response()
            return str(response.model_version)

        def stale() -> float:
            return scrape(sidecar.metrics_url)[("trafficsplit_flag_store_stale", ())]

        before = {u: version(u) for u in (f"o-{i}" for i in range(50))}
        fresh_redis.kill()
        wait_until(lambda: stale() == 1, timeout=10, what="the sidecar to report the outage")
        assert {u: version(u) for u in before} == before  # last good flags keep serving
        fresh_redis.start()  # back, empty (no persistence): still the last good flags
        FlagAdmin(sync_client(fresh_redis.url), keys=RedisKeys(prefix)).apply(
            parse_flag(base_flag(enabled=False)), reason="restored, and turned off"
        )
        wait_until(
            lambda: stale() == 0 and version("alice@example.com") == "1",
            timeout=10,
            what="the resync after Redis returns",
        )
        client.close()
