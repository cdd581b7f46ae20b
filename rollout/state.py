"""The rollout state document, stored beside its flag (``<prefix>rollout:<flag>``) as JSON.

Validated with pydantic like a flag, and written only through :mod:`rollout.store` (compare-and-
set, audited into the flag's own audit stream, fenced for controller replicas). Everything a
standby controller needs to resume where the leader stopped is in here: the phase, the step and
when it started, the control baseline for the 100 % step, the last verdict and the history.

Phases::

    pending ──(gates pass, controller applies step 0)──▶ running ──(last step held)──▶ promoted
                                             │  ▲
                                 pause/resume│  │            breach ──▶ rolled_back
                                             ▼  │            abort  ──▶ aborted
                                            paused
    pending ──(golden set or shadow health fails)──▶ blocked   (rollout.gates)
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flags.errors import FlagsError
from flags.schema import Name

MAX_HISTORY = 200
FINITE = Field(allow_inf_nan=False)


class Phase(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    ROLLED_BACK = "rolled_back"
    PROMOTED = "promoted"
    ABORTED = "aborted"
    BLOCKED = "blocked"  # a gate before the first step failed; the flag was never changed


ACTIVE = frozenset({Phase.PENDING, Phase.RUNNING, Phase.PAUSED})


class RolloutStateError(FlagsError):
    """A rollout state document is invalid, missing, or the requested change does not apply."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaselineRecord(_Strict):
    attempts: Annotated[int, Field(ge=0)]
    failures: Annotated[int, Field(ge=0)]
    p99_s: Annotated[float, FINITE, Field(ge=0)] | None = None
    recorded_at: Annotated[float, FINITE]


class GateRecord(_Strict):
    """One gate's last check before the first step (:mod:`rollout.gates`), shown by status."""

    verdict: Literal["pass", "fail", "wait"]
    reasons: list[Annotated[str, Field(max_length=2048)]] = Field(default_factory=list)
    detail: dict[str, Any] = Field(default_factory=dict)
    checked_at: Annotated[float, FINITE]


class Event(_Strict):
    at: Annotated[float, FINITE]
    event: Annotated[str, Field(max_length=64)]
    step: int | None = None
    percent: Annotated[float, FINITE] | None = None
    actor: Annotated[str, Field(max_length=256)] = ""
    detail: Annotated[str, Field(max_length=2048)] = ""


class RolloutState(_Strict):
    flag: Name
    variant: Name
    phase: Phase
    steps: list[Annotated[float, FINITE, Field(gt=0, le=100)]] = Field(min_length=1)
    step: Annotated[int, Field(ge=-1)] = -1  # -1: no step applied yet
    step_started_at: Annotated[float, FINITE] | None = None
    started_at: Annotated[float, FINITE]
    baseline: BaselineRecord | None = None
    last_verdict: dict[str, Any] | None = None
    gates: dict[Literal["golden", "shadow"], GateRecord] = Field(default_factory=dict)
    history: list[Event] = Field(default_factory=list)
    updated_at: Annotated[float, FINITE] = 0.0
    updated_by: Annotated[str, Field(max_length=256)] = ""

    @property
    def percent(self) -> float:
        """The candidate's share the current step gives it (0 before the first step)."""
        return self.steps[self.step] if self.step >= 0 else 0.0

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    def with_changes(self, *, event: Event | None = None, **changes: Any) -> RolloutState:
        """A copy with ``changes`` and ``event`` appended to the (bounded) history."""
        data = self.model_dump(mode="json")
        data.update(
            {
                k: (v.model_dump(mode="json") if isinstance(v, BaseModel) else v)
                for k, v in changes.items()
            }
        )
        if event is not None:
            data["history"] = [*data["history"], event.model_dump(mode="json")][-MAX_HISTORY:]
        return RolloutState.model_validate(data)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":"))


def parse_state(raw: str | bytes, *, flag: str) -> RolloutState:
    """Validate a stored state document; raises :class:`RolloutStateError` saying what is wrong."""
    try:
        state = RolloutState.model_validate_json(raw)
    except ValidationError as exc:
        issues = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise RolloutStateError(
            f"rollout state of {flag!r} is invalid ({issues}); `flagctl rollout abort {flag}` "
            "replaces it"
        ) from exc
    if state.flag != flag:
        raise RolloutStateError(f"rollout state stored for {flag!r} names flag {state.flag!r}")
    return state
