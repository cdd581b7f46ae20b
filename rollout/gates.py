"""The gates before a rollout's first step, pure: golden set and shadow health, judged together.

A pending rollout whose flag asks for gates gets its first step only when every gate passes:

* **golden** (the flag has a ``golden`` section): a golden-set result for *these* versions and
  *this* golden spec (:func:`fingerprint`); one stored at ``<prefix>golden:<flag>`` by an earlier
  run (the controller's or ``flagctl golden``'s) is reused while fresh (:func:`golden_staleness`),
  else the controller runs the set. The result's verdict is the gate's.
* **shadow** (:func:`shadow_gate_applies`: the ramp's variant is the shadow variant, mirroring is
  on and a requirement is set): :func:`rollout.shadow_gate.shadow_health` over the shadow group of
  the fleet windows.

:func:`gate_action` turns the checks into the controller's next action: any ``fail`` blocks the
rollout (it never starts), any ``wait`` waits, all ``pass`` applies step 1. The adapters that
produce the checks (Redis, the golden runner, the windows) are :mod:`rollout.gating`.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from flags.schema import FlagSpec, Golden
from rollout.decide import Action, Kind
from rollout.golden import GoldenResult
from rollout.shadow_gate import ShadowHealth, ShadowVerdict
from signals.model import VersionStats


class Gate(enum.StrEnum):
    GOLDEN = "golden"
    SHADOW = "shadow"


class GateVerdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"  # the candidate is not fit: the rollout is blocked
    WAIT = "wait"  # not decided yet (golden set running, too few shadow calls, gate cannot run)


@dataclass(frozen=True, slots=True)
class GateCheck:
    """One gate's verdict now, with why and the numbers (stored in the rollout state)."""

    gate: Gate
    verdict: GateVerdict
    reasons: tuple[str, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return f"{self.gate} {self.verdict}" + (
            f" ({'; '.join(self.reasons)})" if self.reasons else ""
        )


# --- golden -------------------------------------------------------------------------------


def fingerprint(spec: FlagSpec, candidate: str) -> dict[str, Any]:
    """What a golden result is valid for: both targets (model, version, parameters) and the
    flag's golden spec. A stored result with another fingerprint is stale."""
    canonical: dict[str, Any] = json.loads(
        json.dumps(
            {
                "golden": (spec.golden or Golden()).model_dump(mode="json"),
                "control": spec.variants[spec.default_variant].model_dump(mode="json"),
                "candidate": spec.variants[candidate].model_dump(mode="json"),
            },
            sort_keys=True,
        )
    )  # through JSON, so it compares equal to what a stored result holds
    return canonical


def golden_staleness(
    document: Mapping[str, Any] | None,
    expected: Mapping[str, Any],
    *,
    now: float,
    max_age_s: float | None,
) -> str | None:
    """Why a stored result cannot be used (None: it is fresh)."""
    if document is None:
        return "no stored golden result"
    if document.get("verdict") not in ("pass", "fail"):
        return "the stored golden result has no verdict"
    if document.get("fingerprint") != expected:
        return "the stored golden result is for other versions or another golden spec"
    if max_age_s is not None:
        at = document.get("timestamp")
        if not isinstance(at, int | float) or now - at > max_age_s:
            return f"the stored golden result is older than {max_age_s:g} s"
    return None


def golden_check(document: Mapping[str, Any]) -> GateCheck:
    """The golden gate's check from a fresh result document (:meth:`GoldenResult.to_json`)."""
    passed = document.get("verdict") == "pass"
    reasons = tuple(str(r) for r in document.get("reasons") or ())
    return GateCheck(
        Gate.GOLDEN, GateVerdict.PASS if passed else GateVerdict.FAIL, reasons, dict(document)
    )


def golden_summary(document: Mapping[str, Any]) -> str:
    """``v1 0.9644, v2 0.9667, agreement 0.9711`` (for audit reasons and status lines)."""
    control, candidate = document.get("control") or {}, document.get("candidate") or {}
    return (
        f"v{control.get('version')} {float(control.get('accuracy', 0.0)):.4f}, "
        f"v{candidate.get('version')} {float(candidate.get('accuracy', 0.0)):.4f}, "
        f"agreement {float(document.get('agreement', 0.0)):.4f}"
    )


class JobState(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class GoldenJob:
    """Where the controller's own golden run for one fingerprint stands."""

    state: JobState
    result: GoldenResult | None = None
    error: str | None = None
    retry_at: float | None = None  # ERROR: when the next attempt may start


class GoldenRunner(Protocol):
    """Runs golden sets off the controller's tick (the adapter: :mod:`rollout.golden_jobs`)."""

    def job(
        self, spec: FlagSpec, candidate: str, expected: Mapping[str, Any], now: float
    ) -> GoldenJob:
        """This fingerprint's run: started now if there is none (or the last failed and its
        retry time has come), else where it stands. Never blocks on the run."""
        ...


# --- shadow -------------------------------------------------------------------------------


def shadow_gate_applies(spec: FlagSpec, candidate: str) -> bool:
    """Shadow health is required when the candidate is the shadow variant, mirroring is on
    (``percent > 0``: with nothing mirrored there is nothing to judge) and a requirement is set
    (``min_agreement > 0`` or ``min_compared > 0``; both 0 mirrors without gating)."""
    shadow = spec.shadow
    return (
        shadow is not None
        and shadow.variant == candidate
        and shadow.percent > 0
        and (shadow.min_agreement > 0 or shadow.min_compared > 0)
    )


def shadow_check(health: ShadowHealth, stats: VersionStats, window_s: int) -> GateCheck:
    verdict = {
        ShadowVerdict.PASS: GateVerdict.PASS,
        ShadowVerdict.FAIL: GateVerdict.FAIL,
        ShadowVerdict.WAIT: GateVerdict.WAIT,
    }[health.verdict]
    detail = {
        "calls": health.calls,
        "compared": health.compared,
        "agreed": health.agreed,
        "errors": health.errors,
        "agreement": health.agreement,
        "error_rate": health.error_rate,
        "p99_s": stats.latency_quantile(0.99),
        "window_seconds": window_s,
    }
    return GateCheck(Gate.SHADOW, verdict, health.reasons, detail)


# --- together -----------------------------------------------------------------------------


def gate_action(checks: Sequence[GateCheck], first_step: float) -> Action:
    """Block on any failure, wait on anything undecided, else apply the first step."""
    failed = [c for c in checks if c.verdict is GateVerdict.FAIL]
    if failed:
        return Action(
            Kind.BLOCK, "; ".join(f"{c.gate} gate failed: {'; '.join(c.reasons)}" for c in failed)
        )
    waiting = [c for c in checks if c.verdict is GateVerdict.WAIT]
    if waiting:
        return Action(
            Kind.WAIT,
            "; ".join(f"waiting for the {c.gate} gate: {'; '.join(c.reasons)}" for c in waiting),
        )
    passed = ", ".join(_passed(c) for c in checks)
    return Action(
        Kind.STEP,
        "rollout started" + (f"; gates passed: {passed}" if passed else ""),
        0,
        first_step,
    )


def _passed(check: GateCheck) -> str:
    if check.gate is Gate.GOLDEN:
        return f"golden ({golden_summary(check.detail)})"
    d = check.detail
    agreement = d.get("agreement")
    shown = "-" if agreement is None else f"{agreement:.4f}"
    return f"shadow (agreement {shown} over {d.get('compared')} compared, {d.get('errors')} errors)"
