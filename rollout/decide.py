"""What the controller does next for one rollout (pure: state, verdict and clock in, action out).

A step is advanced only when its hold has elapsed, the guardrails hold (verdict ``holding``, not
merely "not breached": a candidate nobody called is not judged, so it is not advanced either) and
the step itself saw ``min_requests`` candidate requests. A breach rolls back in any active phase
but ``pending``, paused included: pausing stops the ramp, not the protection.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rollout.guardrails import Status, Verdict
from rollout.state import Phase, RolloutState


class Kind(enum.StrEnum):
    WAIT = "wait"  # nothing to write but the verdict
    STEP = "step"  # apply step ``step`` (the first, from pending, or the next)
    ROLLBACK = "rollback"
    PROMOTE = "promote"
    BLOCK = "block"  # a gate before the first step failed: the rollout never starts


@dataclass(frozen=True, slots=True)
class Action:
    kind: Kind
    reason: str
    step: int | None = None
    percent: float | None = None


def decide(
    state: RolloutState,
    verdict: Verdict | None,
    *,
    step_attempts: int,
    min_requests: int,
    hold_seconds: float,
    now: float,
) -> Action:
    """The next action; ``verdict`` is None while no step is applied (pending)."""
    if state.phase is Phase.PENDING:
        return Action(Kind.STEP, "rollout started", 0, state.steps[0])
    if state.phase not in (Phase.RUNNING, Phase.PAUSED) or verdict is None:
        return Action(Kind.WAIT, f"rollout is {state.phase}")
    if verdict.status is Status.BREACHED:
        return Action(Kind.ROLLBACK, verdict.summary, state.step, 0.0)
    if state.phase is Phase.PAUSED:
        return Action(Kind.WAIT, "paused")
    started = state.step_started_at if state.step_started_at is not None else now
    held = now - started
    if held < hold_seconds:
        return Action(Kind.WAIT, f"holding step {state.step + 1}: {held:.0f}/{hold_seconds:g} s")
    if verdict.status is not Status.HOLDING or step_attempts < max(min_requests, 1):
        return Action(
            Kind.WAIT,
            f"not enough requests to judge: {step_attempts} this step, {min_requests} needed",
        )
    if state.step + 1 >= len(state.steps):
        return Action(Kind.PROMOTE, f"all {len(state.steps)} steps held with guardrails passing")
    nxt = state.step + 1
    return Action(
        Kind.STEP,
        f"step {state.step + 1} held {held:.0f} s with guardrails passing",
        nxt,
        state.steps[nxt],
    )
