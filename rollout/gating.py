"""The gates' adapter: gathers each gate's check for a pending rollout (:mod:`rollout.gates`).

Golden: the stored result at ``<prefix>golden:<flag>`` when it is fresh for these versions, else
the controller's own run (:class:`rollout.gates.GoldenRunner`), whose result is stored there as
``flagctl golden`` stores its own. Shadow: the shadow group of the fleet windows for the shadow
target over the guardrails' long window (``window_seconds``, ending now; mirrored traffic from
before the rollout was started counts: mirroring first, then starting, is the intended order).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import redis

from flags.redis_keys import RedisKeys
from flags.schema import FlagSpec, Guardrails
from rollout.gates import (
    Gate,
    GateCheck,
    GateVerdict,
    GoldenRunner,
    JobState,
    fingerprint,
    golden_check,
    golden_staleness,
    shadow_check,
    shadow_gate_applies,
)
from rollout.golden_store import load_result, store_result
from rollout.shadow_gate import shadow_health
from rollout.state import GateRecord
from rollout.windows import WindowSource
from signals.model import Group
from signals.redis_window import MAX_WINDOW_S

MAX_TEXT = 2048  # the state document's limit on one reason


class Gatekeeper:
    def __init__(
        self,
        client: redis.Redis,
        keys: RedisKeys,
        windows: WindowSource,
        golden: GoldenRunner | None,
        *,
        golden_max_age_s: float | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._windows = windows
        self._golden = golden
        self._max_age_s = golden_max_age_s

    def check(self, spec: FlagSpec, candidate: str, now: float) -> list[GateCheck]:
        """Every gate the flag asks for, checked now (none: the rollout may start at once)."""
        checks = []
        if spec.golden is not None:
            checks.append(self._golden_check(spec, candidate, now))
        if shadow_gate_applies(spec, candidate):
            checks.append(self._shadow_check(spec, now))
        return checks

    def _golden_check(self, spec: FlagSpec, candidate: str, now: float) -> GateCheck:
        expected = fingerprint(spec, candidate)
        document = load_result(self._client, self._keys, spec.key)
        stale = golden_staleness(document, expected, now=now, max_age_s=self._max_age_s)
        if stale is None and document is not None:
            return golden_check(document)
        if self._golden is None:
            return GateCheck(
                Gate.GOLDEN,
                GateVerdict.WAIT,
                (f"{stale}, and this controller runs no golden sets: run `flagctl golden "
                 f"{spec.key}`",),
            )  # fmt: skip
        job = self._golden.job(spec, candidate, expected, now)
        if job.state is JobState.DONE and job.result is not None:
            store_result(self._client, self._keys, job.result)
            return golden_check(job.result.to_json())
        if job.state is JobState.ERROR:
            retry = "" if job.retry_at is None else f"; retrying in {job.retry_at - now:.0f} s"
            why = f"the golden set could not run: {job.error}{retry}"
            return GateCheck(Gate.GOLDEN, GateVerdict.WAIT, (why,))
        return GateCheck(Gate.GOLDEN, GateVerdict.WAIT, (f"{stale}: running the golden set",))

    def _shadow_check(self, spec: FlagSpec, now: float) -> GateCheck:
        assert spec.shadow is not None
        window_s = min(int((spec.guardrails or Guardrails()).window_seconds), MAX_WINDOW_S)
        end = math.floor(now) + 1  # the current second too: sidecars flush every interval
        target = spec.variants[spec.shadow.variant]
        window = self._windows.read(spec.key, end - window_s, end)
        stats = window.version(spec.key, target.model, target.version, groups=(Group.SHADOW,))
        return shadow_check(shadow_health(stats, spec.shadow), stats, window_s)


def records(checks: Sequence[GateCheck], now: float) -> dict[str, GateRecord]:
    """The checks as the rollout state stores them (reasons clipped to the state's limit)."""
    return {
        str(c.gate): GateRecord(
            verdict=c.verdict.value,
            reasons=[r[:MAX_TEXT] for r in c.reasons],
            detail=dict(c.detail),
            checked_at=now,
        )
        for c in checks
    }


def gates_evidence(gates: Mapping[str, GateRecord]) -> dict[str, object]:
    """The audit record's evidence for a decision the gates made."""
    return {"gates": {name: g.model_dump(mode="json") for name, g in gates.items()}}
