"""The rollout controller: every tick, judge each running rollout and act on the verdict.

One tick: hold (or take) the leader lease; list flags with a ``ramp`` section and an active
rollout; a pending one gets its first step once the gates the flag asks for pass (golden set,
shadow health: :mod:`rollout.gates`, checked by :class:`rollout.gating.Gatekeeper`) and is
``blocked`` when one fails; for each running one, read the long, short and current-step windows, judge the guardrails
(:mod:`rollout.guardrails`), pick the action (:mod:`rollout.decide`) and carry it out. Every
write is fenced with the lease's token: the flag through :class:`flags.admin.FlagAdmin` (the
same audited compare-and-set as ``flagctl``), then the state through
:class:`rollout.store.RolloutStore`.

Idempotent by construction, so a standby resuming after a crash never applies a step twice: a
flag write is skipped when the flag already has the share the action wants, and a flag one step
ahead of its state (the leader died between the two writes) is recorded, not re-applied.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from flags import mutations
from flags.admin import FlagAdmin
from flags.errors import FencedError, FlagsError
from flags.redis_keys import RedisKeys
from flags.schema import FlagSpec, Guardrails
from rollout.decide import Action, Kind, decide
from rollout.gates import GateCheck, GateVerdict, GoldenRunner, gate_action
from rollout.gating import MAX_TEXT, Gatekeeper, gates_evidence, records
from rollout.guardrails import COMPARED_GROUPS, Baseline, Verdict, baseline_of, judge
from rollout.lease import Lease
from rollout.metrics import ControllerMetrics
from rollout.notify import Webhooks, log_event, slack_payload
from rollout.state import (
    BaselineRecord,
    Event,
    GateRecord,
    Phase,
    RolloutState,
    RolloutStateError,
)
from rollout.store import RolloutStore, StoredState
from rollout.windows import WindowSource

SAME_SHARE = 1e-6
DEFAULT_GUARDRAILS = Guardrails()


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    tick_s: float = 1.0
    lease_ttl_s: float = 5.0
    replica: str = "controller"
    actor: str = "trafficsplit-controller"
    golden_max_age_s: float | None = None  # a stored golden result older than this is re-run


class Controller:
    def __init__(
        self,
        client: redis.Redis,
        windows: WindowSource,
        *,
        keys: RedisKeys | None = None,
        config: ControllerConfig | None = None,
        clock: Callable[[], float] = time.time,
        metrics: ControllerMetrics | None = None,
        webhooks: Webhooks | None = None,
        golden: GoldenRunner | None = None,
    ) -> None:
        self.config = config or ControllerConfig()
        self._client = client
        self._keys = keys or RedisKeys()
        self._windows = windows
        self._clock = clock
        self.metrics = metrics or ControllerMetrics()
        self._webhooks = webhooks or Webhooks()
        self.lease = Lease(
            client, keys=self._keys, replica=self.config.replica, ttl_s=self.config.lease_ttl_s
        )
        self._reader = FlagAdmin(client, keys=self._keys, actor=self.config.actor)
        self._lease_error: str | None = None
        self.gatekeeper = Gatekeeper(
            client,
            self._keys,
            windows,
            golden,
            golden_max_age_s=self.config.golden_max_age_s,
        )

    def _now_dt(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def tick(self) -> list[tuple[str, Action]]:
        """One pass over every active rollout; returns what was done (for tests and logs)."""
        started = time.perf_counter()
        fence = self.lease.ensure()
        self.metrics.leader.set(1 if fence else 0)
        if self.lease.error != self._lease_error:  # log each outage once, and its end
            self._lease_error = self.lease.error
            log_event(
                "redis_unavailable" if self.lease.error else "redis_available",
                error=self.lease.error,
            )
        if fence is None:
            return []
        admin = FlagAdmin(
            self._client, keys=self._keys, actor=self.config.actor, now=self._now_dt, fence=fence
        )
        store = RolloutStore(self._client, keys=self._keys, actor=self.config.actor, fence=fence)
        done: list[tuple[str, Action]] = []
        try:
            specs = {
                s.key: s.spec
                for s in self._reader.list_flags()
                if s.spec is not None and s.spec.ramp is not None
            }
            for flag, stored in store.get_many(sorted(specs)).items():
                if isinstance(stored, RolloutStateError):
                    self.metrics.errors.labels("invalid_state").inc()
                    continue
                if not stored.state.active:
                    continue
                try:
                    action = self._run_one(admin, store, specs[flag], stored)
                except FencedError:
                    raise
                except FlagsError as exc:  # a conflict with an operator: next tick re-reads
                    self.metrics.errors.labels("flag").inc()
                    log_event("flag_failed", flag=flag, error=str(exc))
                    continue
                if action is not None:
                    done.append((flag, action))
        except FencedError:
            self.lease.fence = None  # another replica took over: stop acting at once
            self.metrics.errors.labels("fenced").inc()
        except FlagsError as exc:
            self.metrics.errors.labels("store").inc()
            log_event("tick_failed", error=str(exc))
        finally:
            self.metrics.tick_seconds.observe(time.perf_counter() - started)
        return done

    def _run_one(
        self, admin: FlagAdmin, store: RolloutStore, spec: FlagSpec, stored: StoredState
    ) -> Action | None:
        state = stored.state
        assert spec.ramp is not None
        if state.variant != spec.ramp.variant or state.variant not in spec.variants:
            return self._pause(store, stored, f"ramp.variant is now {spec.ramp.variant!r}")
        share = mutations.share(spec, state.variant)
        if state.phase is Phase.PENDING:
            return self._start(admin, store, spec, stored, share)
        outside = None
        if state.phase in (Phase.RUNNING, Phase.PAUSED) and abs(share - state.percent) > SAME_SHARE:
            nxt = state.step + 1
            if nxt < len(state.steps) and abs(share - state.steps[nxt]) <= SAME_SHARE:
                # The leader wrote the flag and died before the state: record, do not re-apply.
                action = Action(Kind.STEP, "recovered a step applied before a failover", nxt)
                self._record_step(store, stored, action, None, event="step_recovered")
                return action
            outside = (
                f"the flag gives {state.variant!r} {share:g} %, the rollout step "
                f"{state.percent:g} %: changed outside the rollout, paused"
            )
        guardrails = spec.guardrails or DEFAULT_GUARDRAILS
        verdict, step_attempts = self._judge(spec, state, guardrails)
        action = decide(
            state,
            verdict,
            step_attempts=step_attempts,
            min_requests=guardrails.min_requests,
            hold_seconds=spec.ramp.hold_seconds,
            now=self._clock(),
        )
        if outside is not None and action.kind is not Kind.ROLLBACK:
            # A rollback whose state write was lost still completes; anything else an operator
            # did by hand (flagctl ramp/rollback) wins over the schedule until `rollout resume`.
            return self._pause(store, stored, outside) if state.phase is Phase.RUNNING else None
        if action.kind is Kind.STEP:
            self._apply_share(admin, spec, state.variant, action.percent or 0.0, share, action)
            self._record_step(store, stored, action, verdict, event="step")
        elif action.kind is Kind.ROLLBACK:
            self._rollback(admin, store, spec, stored, action, share, verdict)
        elif action.kind is Kind.PROMOTE:
            admin.update(
                spec.key,
                lambda s: mutations.promote(s, state.variant),
                action="rollout.promote",
                reason=action.reason,
            )
            self._finish(store, stored, Phase.PROMOTED, "promoted", action, verdict)
            self.metrics.promotions.labels(spec.key).inc()
        elif verdict is not None:
            store.write(
                state.with_changes(last_verdict=verdict.to_json(), updated_at=self._clock()),
                stored,
                action="rollout.verdict",
                reason=action.reason,
                audited=False,
            )
        return action

    def _start(
        self,
        admin: FlagAdmin,
        store: RolloutStore,
        spec: FlagSpec,
        stored: StoredState,
        share: float,
    ) -> Action:
        """A pending rollout: its first step once every gate passes, blocked when one fails."""
        state = stored.state
        now = self._clock()
        checks = self.gatekeeper.check(spec, state.variant, now)
        action = gate_action(checks, state.steps[0])
        gates = records(checks, now)
        if action.kind is Kind.STEP:
            self._apply_share(admin, spec, state.variant, action.percent or 0.0, share, action)
            self._record_step(store, stored, action, None, event="step", gates=gates)
        elif action.kind is Kind.BLOCK:
            self._block(store, spec, stored, action, checks, gates)
        else:  # waiting: recorded for `rollout status`; audited once, when the wait begins
            first = not state.gates
            event = Event(at=now, event="gating", actor=self.config.replica,
                          detail=action.reason[:MAX_TEXT])  # fmt: skip
            store.write(
                state.with_changes(gates=gates, updated_at=now, event=event if first else None),
                stored,
                action="rollout.gating",
                reason=action.reason,
                at=self._now_dt(),
                audited=first,
            )
        return action

    def _block(
        self,
        store: RolloutStore,
        spec: FlagSpec,
        stored: StoredState,
        action: Action,
        checks: list[GateCheck],
        gates: dict[str, GateRecord],
    ) -> None:
        state, now = stored.state, self._clock()
        evidence = gates_evidence(gates)
        event = Event(at=now, event="blocked", actor=self.config.replica,
                      detail=action.reason[:MAX_TEXT])  # fmt: skip
        store.write(
            state.with_changes(phase=Phase.BLOCKED, gates=gates, updated_at=now, event=event),
            stored,
            action="rollout.blocked",
            reason=action.reason,
            evidence=evidence,
            at=self._now_dt(),
        )
        failed = [str(c.gate) for c in checks if c.verdict is GateVerdict.FAIL]
        for gate in failed:
            self.metrics.blocked.labels(spec.key, gate).inc()
        fields = {"flag": spec.key, "variant": state.variant, "failed": failed}
        log_event("rollout_blocked", **fields, reason=action.reason, evidence=evidence)
        url = (spec.guardrails or DEFAULT_GUARDRAILS).notify
        if url:
            text = (
                f":no_entry: trafficsplit blocked the rollout of {spec.key!r}: {state.variant!r} "
                f"did not start, users stay on {spec.default_variant!r}. {action.reason}"
            )
            self._webhooks.post(url, slack_payload(text, {**fields, "evidence": evidence}))

    def _judge(
        self, spec: FlagSpec, state: RolloutState, g: Guardrails
    ) -> tuple[Verdict | None, int]:
        if state.step < 0:
            return None, 0
        now = self._clock()
        end = math.floor(now) + 1  # the current second too: sidecars flush every interval
        control = spec.variants[spec.default_variant]
        candidate = spec.variants[state.variant]
        long_start = max(math.floor(now - g.window_seconds), math.floor(state.started_at))
        long = self._windows.read(spec.key, long_start, end)
        short_s = min(g.short_window_seconds, g.window_seconds)
        short_start = max(math.floor(now - short_s), math.floor(state.started_at))
        short = self._windows.read(spec.key, short_start, end)
        step_start = math.floor(state.step_started_at or state.started_at)
        step = self._windows.read(spec.key, step_start, end)
        baseline = None
        if state.percent >= 100 and state.baseline is not None:
            b = state.baseline
            baseline = Baseline(b.attempts, b.failures, b.p99_s)
        verdict = judge(
            g,
            flag=spec.key,
            candidate=candidate,
            control=control,
            long=long,
            short=short,
            baseline=baseline,
        )
        attempts = step.version(spec.key, candidate.model, candidate.version, COMPARED_GROUPS)
        return verdict, attempts.attempts

    def _apply_share(
        self,
        admin: FlagAdmin,
        spec: FlagSpec,
        variant: str,
        percent: float,
        share: float,
        action: Action,
    ) -> None:
        if abs(share - percent) <= SAME_SHARE and spec.enabled:
            return  # already there (a resumed write): never apply a step twice
        admin.update(
            spec.key,
            lambda s: (
                mutations.set_enabled(mutations.ramp(s, variant, percent), True)
                if percent > 0
                else mutations.ramp(s, variant, percent)
            ),
            action=f"rollout.{action.kind}",
            reason=action.reason,
        )

    def _record_step(
        self,
        store: RolloutStore,
        stored: StoredState,
        action: Action,
        verdict: Verdict | None,
        *,
        event: str,
        gates: dict[str, GateRecord] | None = None,
    ) -> None:
        state = stored.state
        now = self._clock()
        step = action.step if action.step is not None else state.step
        percent = state.steps[step]
        baseline = state.baseline
        if percent >= 100 and verdict is not None and not verdict.control_is_baseline:
            b = baseline_of(verdict)
            baseline = BaselineRecord(
                attempts=b.attempts, failures=b.failures, p99_s=b.p99_s, recorded_at=now
            )
        new = state.with_changes(
            phase=Phase.RUNNING,
            step=step,
            step_started_at=now,
            baseline=baseline,
            last_verdict=verdict.to_json() if verdict else state.last_verdict,
            gates=state.gates if gates is None else gates,
            updated_at=now,
            event=Event(
                at=now,
                event=event,
                step=step,
                percent=percent,
                actor=self.config.replica,
                detail=action.reason[:MAX_TEXT],
            ),
        )
        if verdict is not None:
            evidence: dict[str, object] | None = verdict.to_json()
        elif gates:
            evidence = gates_evidence(gates)
        else:
            evidence = None
        store.write(
            new,
            stored,
            action=f"rollout.{event}",
            reason=f"step {step + 1}/{len(state.steps)}: {percent:g} % ({action.reason})",
            evidence=evidence,
            at=self._now_dt(),
        )
        self.metrics.steps.labels(state.flag).inc()
        self.metrics.percent.labels(state.flag).set(percent)
        log_event(
            "rollout_step", flag=state.flag, step=step + 1, percent=percent, reason=action.reason
        )

    def _rollback(
        self,
        admin: FlagAdmin,
        store: RolloutStore,
        spec: FlagSpec,
        stored: StoredState,
        action: Action,
        share: float,
        verdict: Verdict | None,
    ) -> None:
        state = stored.state
        self._apply_share(admin, spec, state.variant, 0.0, share, action)
        written_at = self._clock()
        self._finish(store, stored, Phase.ROLLED_BACK, "rolled_back", action, verdict)
        evidence = verdict.to_json() if verdict else {}
        rule = str(verdict.fired[0].rule) if verdict and verdict.fired else "unknown"
        self.metrics.rollbacks.labels(spec.key, rule).inc()
        self.metrics.percent.labels(spec.key).set(0)
        log_event(
            "rollout_rolled_back",
            flag=spec.key,
            variant=state.variant,
            step=state.step + 1,
            rule=rule,
            reason=action.reason,
            flag_written_at=written_at,
            evidence=evidence,
        )
        url = (spec.guardrails or DEFAULT_GUARDRAILS).notify
        if url:
            text = (
                f":rotating_light: trafficsplit rolled back {spec.key!r}: {state.variant!r} "
                f"at step {state.step + 1} ({state.percent:g} %) back to "
                f"{spec.default_variant!r}. {action.reason}"
            )
            self._webhooks.post(
                url,
                slack_payload(
                    text,
                    {
                        "flag": spec.key,
                        "variant": state.variant,
                        "rule": rule,
                        "evidence": evidence,
                    },
                ),
            )

    def _finish(
        self,
        store: RolloutStore,
        stored: StoredState,
        phase: Phase,
        event: str,
        action: Action,
        verdict: Verdict | None,
    ) -> None:
        state = stored.state
        now = self._clock()
        new = state.with_changes(
            phase=phase,
            last_verdict=verdict.to_json() if verdict else state.last_verdict,
            updated_at=now,
            event=Event(
                at=now,
                event=event,
                step=state.step,
                percent=state.percent,
                actor=self.config.replica,
                detail=action.reason,
            ),
        )
        store.write(
            new,
            stored,
            action=f"rollout.{event}",
            reason=action.reason,
            evidence=verdict.to_json() if verdict else None,
            at=self._now_dt(),
        )

    def _pause(self, store: RolloutStore, stored: StoredState, why: str) -> Action:
        now = self._clock()
        action = Action(Kind.WAIT, why)
        if stored.state.phase is not Phase.PAUSED:
            store.write(
                stored.state.with_changes(
                    phase=Phase.PAUSED,
                    updated_at=now,
                    event=Event(at=now, event="paused", actor=self.config.replica, detail=why),
                ),
                stored,
                action="rollout.pause",
                reason=why,
                at=self._now_dt(),
            )
        return action
