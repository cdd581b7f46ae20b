"""The pure halves of rollouts: the next action, the state document, schema and ramp edits."""

from __future__ import annotations

from typing import Any

import pytest
from support import digits_flag

from flags import (
    CompiledFlag,
    FlagValidationError,
    Snapshot,
    Subject,
    VariantError,
    evaluate,
    parse_flag,
)
from flags.mutations import promote, ramp, share
from flags.schema import Guardrails
from rollout.decide import Kind, decide
from rollout.guardrails import Evidence, Fired, Rule, Status, Verdict
from rollout.state import Event, Phase, RolloutState, RolloutStateError, parse_state

NONE = Evidence(0, 0, None, None)


def verdict(status: Status) -> Verdict:
    fired = (Fired(Rule.ERROR_RATE, "long", 0.5, 0.01, "error rate 50 %"),)
    return Verdict(status, fired if status is Status.BREACHED else (), NONE, NONE, NONE, NONE)


def state(phase: Phase = Phase.RUNNING, step: int = 1, started: float = 100.0) -> RolloutState:
    return RolloutState(
        flag="digits",
        variant="candidate",
        phase=phase,
        steps=[1, 5, 100],
        step=step,
        step_started_at=started,
        started_at=0.0,
    )


def act(s: RolloutState, v: Verdict | None, *, now: float, attempts: int = 500) -> Any:
    return decide(s, v, step_attempts=attempts, min_requests=100, hold_seconds=10, now=now)


def test_pending_applies_the_first_step() -> None:
    a = act(state(Phase.PENDING, step=-1), None, now=0)
    assert (a.kind, a.step, a.percent) == (Kind.STEP, 0, 1)


def test_a_step_advances_only_after_its_hold_with_guardrails_holding_and_enough_requests() -> None:
    holding = verdict(Status.HOLDING)
    assert act(state(), holding, now=109.9).kind is Kind.WAIT
    a = act(state(), holding, now=110.0)
    assert (a.kind, a.step, a.percent) == (Kind.STEP, 2, 100)
    assert act(state(), holding, now=200, attempts=99).kind is Kind.WAIT
    assert act(state(), verdict(Status.NOT_ENOUGH_DATA), now=200).kind is Kind.WAIT


def test_the_last_step_held_promotes() -> None:
    assert act(state(step=2), verdict(Status.HOLDING), now=110).kind is Kind.PROMOTE


@pytest.mark.parametrize("phase", [Phase.RUNNING, Phase.PAUSED])
def test_a_breach_rolls_back_even_when_paused(phase: Phase) -> None:
    a = act(state(phase), verdict(Status.BREACHED), now=101)
    assert (a.kind, a.percent, a.reason) == (Kind.ROLLBACK, 0.0, "error rate 50 %")


def test_paused_and_finished_rollouts_do_not_advance() -> None:
    assert act(state(Phase.PAUSED), verdict(Status.HOLDING), now=1e9).kind is Kind.WAIT
    for phase in (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED):
        assert act(state(phase), verdict(Status.BREACHED), now=1e9).kind is Kind.WAIT


def test_state_history_is_bounded_and_invalid_states_are_refused() -> None:
    s = state()
    for i in range(250):
        s = s.with_changes(event=Event(at=float(i), event="tick"))
    assert len(s.history) == 200 and s.history[0].at == 50.0
    assert parse_state(s.to_json(), flag="digits") == s
    with pytest.raises(RolloutStateError, match="phase"):
        parse_state(s.to_json().replace('"running"', '"sideways"'), flag="digits")
    with pytest.raises(RolloutStateError, match="names flag"):
        parse_state(s.to_json(), flag="other")
    with pytest.raises(RolloutStateError):
        parse_state(b"{not json", flag="digits")


# --- schema -----------------------------------------------------------------------------------


def test_guardrail_defaults_and_old_documents_stay_valid() -> None:
    g = Guardrails()
    assert (g.short_window_seconds, g.short_max_error_rate, g.short_min_requests) == (10, 0.2, 20)
    assert g.relative_error_alpha == 0.01 and g.notify is None
    old = parse_flag(digits_flag(guardrails={"window_seconds": 5, "min_requests": 10}))
    assert old.guardrails is not None and old.guardrails.window_seconds == 5


@pytest.mark.parametrize(
    ("guardrails", "message"),
    [
        ({"notify": "ftp://example.com/hook"}, "http:// or https://"),
        ({"notify": "https://"}, "http:// or https://"),
        ({"window_seconds": 60, "short_window_seconds": 61}, "must not exceed"),
        ({"relative_error_alpha": 0.5}, "relative_error_alpha"),
        ({"short_max_error_rate": 0}, "short_max_error_rate"),
        ({"short_min_requests": 0}, "short_min_requests"),
        ({"short_window_seconds": -1}, "short_window_seconds"),
    ],
)
def test_bad_guardrails_are_refused_with_the_field_named(
    guardrails: dict[str, Any], message: str
) -> None:
    with pytest.raises(FlagValidationError, match=message):
        parse_flag(digits_flag(guardrails=guardrails))


def segment_flag(**ramp_section: Any) -> dict[str, Any]:
    """An experiment that lives in a rule: only pro users are split; no allocation."""
    doc = digits_flag(
        rules=[
            {
                "name": "pro",
                "when": {"attribute": "tier", "op": "eq", "value": "pro"},
                "split": {"control": 100, "candidate": 0},
            }
        ],
        ramp={"variant": "candidate", "steps": [5, 50, 100], **ramp_section},
    )
    doc.pop("allocation")
    return doc


def test_ramp_rule_must_name_a_rule_with_a_split() -> None:
    with pytest.raises(FlagValidationError, match=r"ramp\.rule: no rule named 'nope'"):
        parse_flag(segment_flag(rule="nope"))
    assert parse_flag(segment_flag(rule="pro")).ramp.rule == "pro"  # type: ignore[union-attr]


# --- segment-aware ramps ----------------------------------------------------------------------


def variants_of(spec: Any, tier: str, n: int = 2000) -> set[str]:
    snapshot = Snapshot({"digits": CompiledFlag(spec)})
    return {
        evaluate(snapshot, "digits", Subject(f"u{i}", {"tier": tier})).variant for i in range(n)
    }


def test_ramping_a_rules_split_leaves_users_outside_the_rule_on_the_default() -> None:
    spec = parse_flag(segment_flag())
    ramped = ramp(spec, "candidate", 100, rule="pro")
    assert ramped.allocation is None
    assert ramped.rules[0].split == {"control": 0.0, "candidate": 100.0}
    assert variants_of(ramped, "pro") == {"candidate"}
    assert variants_of(ramped, "free") == {"control"}


def test_ramp_without_a_rule_never_creates_an_allocation_for_a_segment_experiment() -> None:
    with pytest.raises(VariantError, match="name one with --rule"):
        ramp(parse_flag(segment_flag()), "candidate", 5)
    # the ramp section's rule is the default target
    ramped = ramp(parse_flag(segment_flag(rule="pro")), "candidate", 5)
    assert ramped.allocation is None
    assert share(ramped, "candidate") == 5.0
    with pytest.raises(VariantError, match="no rule named 'vip'"):
        ramp(parse_flag(segment_flag()), "candidate", 5, rule="vip")


def test_ramp_keeps_coverage() -> None:
    doc = digits_flag(allocation={"coverage": 30, "split": {"control": 100}})
    ramped = ramp(parse_flag(doc), "candidate", 50)
    assert ramped.allocation is not None and ramped.allocation.coverage == 30


def test_promote_makes_the_candidate_the_default_for_everyone() -> None:
    promoted = promote(parse_flag(digits_flag()), "candidate")
    assert promoted.default_variant == "candidate"
    assert promoted.allocation is None and promoted.ramp is None
    assert all(r.serve == "candidate" for r in promoted.rules)
    assert variants_of(promoted, "pro") == {"candidate"}
    assert variants_of(promoted, "free") == {"candidate"}
