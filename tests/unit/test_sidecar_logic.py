"""Pure sidecar logic: route planning, circuit breaker, retry budget, subjects, tensors, settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import digits_flag
from tritonclient.grpc import service_pb2 as kserve

from flags import CompiledFlag, Snapshot, Subject, parse_flag
from sidecar.circuit import CircuitBreaker
from sidecar.errors import InvalidRequest, PinningForbidden
from sidecar.plan import ANONYMOUS, NO_FLAG, Hop, plan_route
from sidecar.retry_budget import RetryBudget
from sidecar.settings import Settings, load_settings
from sidecar.subjects import SubjectRules, subject_from_metadata
from sidecar.tensors import check_message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def snapshot(**overrides: Any) -> Snapshot:
    return Snapshot({"digits": CompiledFlag(parse_flag(digits_flag(**overrides)))})


def test_plan_for_a_candidate_user_falls_back_to_the_default() -> None:
    plan = plan_route(snapshot(), "digits", "", Subject("alice@example.com"))
    assert (plan.variant, plan.reason, plan.primary.version) == (
        "candidate",
        "TARGETING_MATCH",
        "2",
    )
    assert plan.fallback == Hop("digits", "1", {})
    assert plan.primary.parameters == {"note": "mlp"}


def test_plan_for_a_control_user_has_no_fallback() -> None:
    plan = plan_route(
        snapshot(rules=[], allocation={"split": {"control": 100, "candidate": 0}}),
        "digits",
        "",
        Subject("u"),
    )
    assert (plan.variant, plan.primary.version, plan.fallback) == ("control", "1", None)


def test_model_without_a_flag_is_passed_through() -> None:
    plan = plan_route(snapshot(), "resnet", "3", Subject("u"))
    assert (plan.flag, plan.reason, plan.primary, plan.fallback) == (
        "",
        NO_FLAG,
        Hop("resnet", "3"),
        None,
    )


def test_pinned_version_is_served_and_never_exposed() -> None:
    plan = plan_route(snapshot(), "digits", "2", Subject("u"))
    assert (plan.variant, plan.reason, plan.primary.version, plan.exposed) == (
        "candidate",
        "PINNED",
        "2",
        False,
    )


def test_pinning_can_be_forbidden_by_the_flag() -> None:
    with pytest.raises(PinningForbidden, match="does not allow pinning"):
        plan_route(
            snapshot(allow_version_pinning=False, rules=[], allocation=None),
            "digits",
            "2",
            Subject("u"),
        )
    # Asking for the version the user gets anyway is fine.
    assert (
        plan_route(
            snapshot(allow_version_pinning=False, rules=[], allocation=None),
            "digits",
            "1",
            Subject("u"),
        ).primary.version
        == "1"
    )


def test_anonymous_subject_gets_the_default() -> None:
    plan = plan_route(snapshot(), "digits", "", Subject(""))
    assert (plan.variant, plan.reason, plan.exposed) == ("control", ANONYMOUS, False)


def test_circuit_opens_after_a_burst_and_probes_after_cool_down() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cool_down_s=5, clock=clock)
    for _ in range(2):
        breaker.failure("digits:2")
    assert breaker.allow("digits:2")
    breaker.failure("digits:2")
    assert not breaker.allow("digits:2") and breaker.opened == 1
    clock.now += 5
    assert breaker.allow("digits:2")  # the probe
    assert not breaker.allow("digits:2")  # only one at a time
    breaker.failure("digits:2")  # probe failed: open for twice as long
    clock.now += 9.9
    assert not breaker.allow("digits:2")
    clock.now += 0.2
    assert breaker.allow("digits:2")
    breaker.success("digits:2")
    assert breaker.allow("digits:2") and not breaker.is_open("digits:2")


def test_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(threshold=3, clock=Clock())
    for _ in range(10):
        breaker.failure("k")
        breaker.failure("k")
        breaker.success("k")
    assert breaker.allow("k") and breaker.opened == 0


def test_retry_budget_allows_a_share_of_requests_plus_a_floor() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.1, min_per_s=10, clock=clock)
    spent = sum(budget.try_spend() for _ in range(100))
    assert spent == 10  # the floor's initial tokens
    for _ in range(100):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(100)) == 10  # 10 % of 100 requests
    clock.now += 1
    assert sum(budget.try_spend() for _ in range(100)) == 10  # 10 per second
    assert budget.denied == 270


def test_subject_from_metadata_reads_id_and_attributes() -> None:
    subject = subject_from_metadata(
        {"x-user-id": "u1", "x-attr-tier": "pro", "other": "x"}, SubjectRules()
    )
    assert subject == Subject("u1", {"tier": "pro"})
    assert subject_from_metadata({}, SubjectRules(), parameter_user_id="u2").id == "u2"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({}, "no user id"),
        ({"x-user-id": "u" * 257}, "the limit is 256"),
        (
            {"x-user-id": "u", **{f"x-attr-a{i}": "v" for i in range(65)}},
            "65 attributes; the limit is 64",
        ),
        ({"x-user-id": "u", "x-attr-a": "v" * 1025}, "attribute 'a' is 1025 characters"),
    ],
)
def test_subject_limits(metadata: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        subject_from_metadata(metadata, SubjectRules())


def _request(shape: list[int], datatype: str, data: bytes | None) -> kserve.ModelInferRequest:
    request = kserve.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "pixels", datatype
    tensor.shape.extend(shape)
    if data is not None:
        request.raw_input_contents.append(data)
    return request


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (kserve.ModelInferRequest(model_name="digits"), "no input tensors"),
        (_request([1, 64], "FP32", b"\x00" * 10), "needs 256"),
        (_request([1, -2], "FP32", b""), "negative dimension"),
        (_request([1, 64], "FLOAT", b"\x00" * 256), "unknown datatype 'FLOAT'"),
        (_request([1 << 20, 1 << 10], "FP32", None), "exceed the limit"),
    ],
)
def test_tensor_checks(request_: kserve.ModelInferRequest, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        check_message(request_, max_elements=1 << 26)


def test_valid_tensor_passes() -> None:
    check_message(_request([2, 64], "FP32", b"\x00" * 512), max_elements=1 << 26)


def test_settings_precedence_argument_over_environment_over_default() -> None:
    env = {
        "TRAFFICSPLIT_LISTEN": "127.0.0.1:9000",
        "TRAFFICSPLIT_TRITON_URL": "triton:8001",
        "TRAFFICSPLIT_ALLOW_ANONYMOUS": "true",
    }
    settings = load_settings(["--listen", "127.0.0.1:9100", "--flags-file", "/tmp/f.json"], env)
    assert settings.listen == "127.0.0.1:9100"
    assert settings.triton_url == "triton:8001"
    assert settings.flags_file == Path("/tmp/f.json")
    assert settings.allow_anonymous is True
    assert load_settings([], {}) == Settings()
    assert Settings().listen.startswith("127.0.0.1:")  # never 0.0.0.0 unless asked


def test_with_tracing_off_the_callers_trace_context_reaches_the_backend() -> None:
    import asyncio

    from opentelemetry.sdk.trace import TracerProvider

    from flags.store import FlagStore
    from sidecar.routing import MessageCall, Router

    seen: list[tuple[tuple[str, str], ...]] = []

    class Backend:
        name = "fake"

        async def infer(
            self,
            request: kserve.ModelInferRequest,
            *,
            timeout: float | None,
            metadata: tuple[tuple[str, str], ...] = (),
        ) -> kserve.ModelInferResponse:
            seen.append(metadata)
            return kserve.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version
            )

    store = FlagStore()
    store.sync({"digits": __import__("json").dumps(digits_flag())}, complete=True)
    router = Router(store, Backend(), TracerProvider().get_tracer("t"), tracing=False)  # type: ignore[arg-type]
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    routed = asyncio.run(
        router.infer(
            MessageCall(kserve.ModelInferRequest(model_name="digits")),
            Subject("alice@example.com"),
            timeout=5,
            rpc="ModelInfer",
            metadata=(("traceparent", parent), ("x-user-id", "alice@example.com")),
        )
    )
    assert routed.served_version == "2"
    assert seen == [(("traceparent", parent),)]
