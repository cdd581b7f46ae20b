"""Pure sidecar logic: route planning, circuit breaker, retry budget, subjects, tensors, settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import digits_flag
from tritonclient.grpc import service_pb2 as kserve

from flags import CompiledFlag, Snapshot, Subject, parse_flag
from sidecar.circuit import CircuitBreaker, CircuitState
from sidecar.errors import InvalidRequest, NoFlag, PinningForbidden
from sidecar.plan import ANONYMOUS, NO_FLAG, STABLE, Hop, Membership, UnflaggedPolicy, plan_route
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


def test_model_without_a_flag_is_refused_unless_an_operator_chose_a_version() -> None:
    with pytest.raises(NoFlag, match=r"--stable resnet=VERSION"):
        plan_route(snapshot(), "resnet", "", Subject("u"))
    stable = plan_route(snapshot(), "resnet", "", Subject("u"), UnflaggedPolicy({"resnet": "3"}))
    assert (stable.reason, stable.primary, stable.fallback, stable.membership) == (
        STABLE,
        Hop("resnet", "3"),
        None,
        Membership.UNFLAGGED,
    )
    passthrough = plan_route(
        snapshot(), "resnet", "", Subject("u"), UnflaggedPolicy(passthrough=True)
    )
    assert (passthrough.reason, passthrough.primary) == (NO_FLAG, Hop("resnet", ""))
    # A version the caller names is its own choice: served, as a pin.
    pinned = plan_route(snapshot(), "resnet", "3", Subject("u"))
    assert (pinned.primary, pinned.membership) == (Hop("resnet", "3"), Membership.PINNED)


def test_membership_tells_exposed_targeted_and_outside_coverage_apart() -> None:
    flag = snapshot(allocation={"coverage": 50, "split": {"control": 50, "candidate": 50}})
    allow_listed = plan_route(flag, "digits", "", Subject("alice@example.com"))
    assert (allow_listed.variant, allow_listed.membership) == ("candidate", Membership.TARGETED)
    memberships = {
        plan_route(flag, "digits", "", Subject(f"user-{i}")).membership for i in range(200)
    }
    assert memberships == {Membership.EXPOSED, Membership.NOT_IN_EXPERIMENT}


def test_pinned_version_is_served_and_never_exposed() -> None:
    plan = plan_route(snapshot(), "digits", "2", Subject("u"))
    assert (plan.variant, plan.reason, plan.primary.version, plan.membership) == (
        "candidate",
        "PINNED",
        "2",
        Membership.PINNED,
    )
    assert not plan.exposed


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


def fail(breaker: CircuitBreaker, key: str) -> None:
    permit = breaker.permit(key)
    assert permit is not None
    with permit:
        permit.failed()


def test_circuit_opens_after_a_burst_and_probes_after_cool_down() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cool_down_s=5, clock=clock)
    for _ in range(2):
        fail(breaker, "digits:2")
    assert breaker.permit("digits:2") is not None
    fail(breaker, "digits:2")
    assert breaker.permit("digits:2") is None and breaker.opened == 1
    assert breaker.state("digits:2") is CircuitState.OPEN
    clock.now += 5
    probe = breaker.permit("digits:2")  # the probe
    assert probe is not None and probe.probe
    assert breaker.permit("digits:2") is None  # only one at a time
    with probe:
        probe.failed()  # probe failed: open for twice as long
    clock.now += 9.9
    assert breaker.permit("digits:2") is None
    clock.now += 0.2
    probe = breaker.permit("digits:2")
    assert probe is not None
    with probe:
        probe.succeeded()
    assert breaker.permit("digits:2") is not None and not breaker.is_open("digits:2")
    assert breaker.probes == {"succeeded": 1, "failed": 1, "released": 0}


@pytest.mark.parametrize("ending", ["client error", "cancelled"])
def test_a_probe_that_tells_nothing_releases_the_half_open_slot(ending: str) -> None:
    """A probe ending in a client error or a cancellation used to leave the circuit open
    forever; leaving the permit unsettled now lets the next request probe."""
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cool_down_s=5, clock=clock)
    fail(breaker, "digits:2")
    clock.now += 5
    probe = breaker.permit("digits:2")
    assert probe is not None
    with pytest.raises(RuntimeError), probe:
        raise RuntimeError(ending)  # neither succeeded() nor failed()
    assert breaker.probes["released"] == 1
    next_probe = breaker.permit("digits:2")
    assert next_probe is not None, "the circuit must not stay open without a probe"
    with next_probe:
        next_probe.succeeded()
    assert breaker.state("digits:2") is CircuitState.CLOSED


def test_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(threshold=3, clock=Clock())
    for _ in range(10):
        fail(breaker, "k")
        fail(breaker, "k")
        permit = breaker.permit("k")
        assert permit is not None
        with permit:
            permit.succeeded()
    assert breaker.permit("k") is not None and breaker.opened == 0


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
