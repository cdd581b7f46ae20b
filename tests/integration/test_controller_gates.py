"""The gates before the first ramp step, in the controller, against a real redis-server.

Golden runs use the embedded onnxruntime engine (the bundled digits, or a test-only repository
whose v2 answers a constant); shadow windows are written by the signals writer the sidecars use;
the clock is injected. A failing gate blocks the rollout before step 1 (audit, status, webhook
say why), a passing one lets it ramp, an undecided one waits.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servers import RedisServer, wait_until
from support import digits_flag
from test_golden_gate import CONSTANT, GOLDEN, offline_labels, worse_repository  # noqa: F401
from test_rollout_cli import flagctl
from test_rollout_controller import Clock, Hook, Traffic, webhook  # noqa: F401

from flags import parse_flag
from flags.admin import FlagAdmin
from flags.mutations import share
from flags.redis_conn import async_client, sync_client
from flags.redis_keys import RedisKeys
from rollout.controller import Controller, ControllerConfig
from rollout.decide import Kind
from rollout.golden_jobs import GoldenJobs
from rollout.golden_store import golden_key
from rollout.state import Phase, RolloutState
from rollout.store import RolloutStore
from rollout.windows import MemoryWindows, RedisWindows
from signals.codec import ATTEMPTS, RESULT, target_prefix
from signals.redis_window import RedisSignalWriter

pytestmark = pytest.mark.redis
STEPS = [1.0, 5.0, 20.0, 50.0, 100.0]


def gated_flag(**sections: Any) -> dict[str, Any]:
    doc = digits_flag(
        **{
            "allocation": {"coverage": 100, "split": {"control": 100}},
            "ramp": {"variant": "candidate", "steps": STEPS, "hold_seconds": 10},
            "guardrails": {"min_requests": 20, "window_seconds": 60},
            "shadow": {"variant": "candidate", "percent": 0},
            **sections,
        }
    )
    doc.pop("revision", None)
    return doc


class Env:
    def __init__(self, redis: RedisServer, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.client = sync_client(redis.url)
        self.keys = RedisKeys(prefix)
        self.admin = FlagAdmin(self.client, keys=self.keys, actor="ops")
        self.store = RolloutStore(self.client, keys=self.keys, actor="ops")
        self.clock = Clock()
        self.memory = MemoryWindows()
        self.traffic = Traffic(self.memory, self.admin)

    def start(self, doc: dict[str, Any]) -> None:
        self.admin.apply(parse_flag(doc), reason="set up")
        state = RolloutState(
            flag="digits",
            variant="candidate",
            phase=Phase.PENDING,
            steps=STEPS,
            started_at=self.clock(),
        )
        self.store.write(state, None, action="rollout.start", reason="test")

    def controller(
        self, golden: GoldenJobs | None, *, redis_windows: bool = False, **config: Any
    ) -> Controller:
        windows = RedisWindows(self.client, self.prefix) if redis_windows else self.memory
        return Controller(
            self.client,
            windows,
            keys=self.keys,
            config=ControllerConfig(replica="a", actor="controller/a", **config),
            clock=self.clock,
            golden=golden,
        )

    def state(self) -> RolloutState:
        stored = self.store.get("digits")
        assert stored is not None
        return stored.state

    def audit(self) -> list[Any]:
        return list(reversed(self.admin.audit("digits", limit=100)))

    def share(self) -> float:
        spec = self.admin.get("digits").spec
        assert spec is not None
        return share(spec, "candidate")


@pytest.fixture
def env(redis_server: RedisServer, prefix: str) -> Iterator[Env]:
    e = Env(redis_server, prefix)
    yield e
    e.client.close()


@pytest.fixture
def jobs() -> Iterator[GoldenJobs]:
    runner = GoldenJobs()  # the embedded engine on the bundled triton_models/
    yield runner
    runner.close()


def tick_once(env: Env, ctl: Controller) -> list[Any]:
    env.clock.t += 1
    return [action for _, action in ctl.tick()]


def gate_until_decided(env: Env, ctl: Controller, runner: GoldenJobs) -> Any:
    """Tick: the golden run starts (waiting), finishes off the tick, the next tick decides."""
    [first] = tick_once(env, ctl)
    assert first.kind is Kind.WAIT and "running the golden set" in first.reason
    wait_until(runner.idle, timeout=60, what="the golden run")
    [decided] = tick_once(env, ctl)
    return decided


def test_a_constant_candidate_is_blocked_before_step_1_and_everyone_says_why(
    env: Env,
    worse_repository: Path,  # noqa: F811
    webhook: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    runner = GoldenJobs(model_repository=worse_repository)
    try:
        env.start(gated_flag(golden={"max_accuracy_drop": 0.01},
                             guardrails={"min_requests": 20, "notify": webhook}))  # fmt: skip
        ctl = env.controller(runner)
        pending = tick_once(env, ctl)
        assert env.state().phase is Phase.PENDING
        assert env.state().gates["golden"].verdict == "wait"
        assert pending[0].kind is Kind.WAIT
        wait_until(runner.idle, timeout=60, what="the golden run")
        [blocked] = tick_once(env, ctl)
    finally:
        runner.close()
    labels = GOLDEN["labels"]
    control_correct = int(np.sum(offline_labels("1") == labels))
    candidate_correct = int(np.sum(labels == CONSTANT))
    assert blocked.kind is Kind.BLOCK
    assert blocked.reason.startswith("golden gate failed: candidate accuracy ")
    final = env.state()
    assert final.phase is Phase.BLOCKED and final.step == -1
    gate = final.gates["golden"]
    assert gate.verdict == "fail" and "below control's" in gate.reasons[0]
    assert gate.detail["candidate"]["correct"] == candidate_correct
    assert gate.detail["control"]["correct"] == control_correct
    assert env.share() == 0  # the flag was never touched: nobody saw the candidate
    actions = [e.fields["action"] for e in env.audit()]
    assert actions == ["apply", "rollout.start", "rollout.gating", "rollout.blocked"]
    evidence = json.loads(env.audit()[-1].fields["evidence"])
    assert evidence["gates"]["golden"]["detail"]["candidate"]["correct"] == candidate_correct
    assert ctl.metrics.blocked.labels("digits", "golden")._value.get() == 1
    # the stored result is the one a later run or `flagctl golden` would find
    stored = json.loads(env.client.get(golden_key(env.keys, "digits")))
    assert stored["verdict"] == "fail" and stored["timestamp"] == env.clock.t - 1
    wait_until(lambda: Hook.received, timeout=5, what="the webhook POST")
    assert Hook.received[0]["text"].startswith(":no_entry: trafficsplit blocked the rollout")
    assert Hook.received[0]["failed"] == ["golden"]
    assert Hook.received[0]["evidence"]["gates"]["golden"]["verdict"] == "fail"
    # status, for people and for machines
    code, out, err = flagctl(capsys, env.redis.url, env.prefix, "rollout", "status", "digits")
    assert code == 0, err
    assert "blocked" in out and "golden gate: fail" in out and "below control's" in out
    code, out, err = flagctl(capsys, env.redis.url, env.prefix, "rollout", "status", "digits",
                             "--json")  # fmt: skip
    payload = json.loads(out)
    assert payload["phase"] == "blocked"
    assert payload["gates"]["golden"]["detail"]["candidate"]["accuracy"] == candidate_correct / len(
        labels
    )
    # blocked is final: more ticks do nothing, and promoting it is refused
    assert tick_once(env, ctl) == []
    code, _, err = flagctl(capsys, env.redis.url, env.prefix, "rollout", "promote", "digits")
    assert code == 1 and "blocked" in err


def test_a_good_candidate_passes_the_golden_gate_and_ramps_to_promotion(
    env: Env, jobs: GoldenJobs
) -> None:
    env.start(gated_flag(golden={"max_accuracy_drop": 0.01}))
    ctl = env.controller(jobs)
    started = gate_until_decided(env, ctl, jobs)
    labels = GOLDEN["labels"]
    v1 = float(np.mean(offline_labels("1") == labels))
    v2 = float(np.mean(offline_labels("2") == labels))
    agreement = float(np.mean(offline_labels("1") == offline_labels("2")))
    assert started.kind is Kind.STEP and started.percent == 1
    assert started.reason == (
        f"rollout started; gates passed: golden (v1 {v1:.4f}, v2 {v2:.4f}, "
        f"agreement {agreement:.4f})"
    )
    gate = env.state().gates["golden"]
    assert gate.verdict == "pass" and gate.detail["candidate"]["accuracy"] == v2
    assert env.share() == 1
    for _ in range(200):
        env.clock.t += 1
        env.traffic.second(env.clock.t)
        ctl.tick()
        if env.state().phase is Phase.PROMOTED:
            break
    assert env.state().phase is Phase.PROMOTED
    actions = [e.fields["action"] for e in env.audit()]
    assert actions[:5] == ["apply", "rollout.start", "rollout.gating", "rollout.step",
                           "rollout.step"]  # fmt: skip
    assert actions[-2:] == ["rollout.promote", "rollout.promoted"]
    first_step = env.audit()[4]
    assert json.loads(first_step.fields["evidence"])["gates"]["golden"]["verdict"] == "pass"
    assert env.state().gates["golden"].verdict == "pass"  # kept for status after the ramp


def test_a_fresh_stored_result_is_used_and_a_stale_one_is_not(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = gated_flag(golden={"max_accuracy_drop": 0.01})
    env.start(doc)
    code, _, err = flagctl(capsys, env.redis.url, env.prefix, "golden", "digits")
    assert code == 0, err
    # No runner at all: the result `flagctl golden` stored is for these versions and this spec.
    # Too old for a controller that wants results of the last minute (the clock is 2027's):
    aged = env.controller(None, golden_max_age_s=60)
    [waiting] = tick_once(env, aged)
    assert waiting.kind is Kind.WAIT
    assert "older than 60 s, and this controller runs no golden sets" in waiting.reason
    aged.lease.release()
    fresh = env.controller(None)
    [started] = tick_once(env, fresh)
    assert started.kind is Kind.STEP and "gates passed: golden" in started.reason
    # A new rollout after the golden spec changed: the stored result is stale.
    env.client.delete(f"{env.prefix}rollout:digits")
    env.start(gated_flag(golden={"max_accuracy_drop": 0.02}))
    [stale] = tick_once(env, fresh)
    assert stale.kind is Kind.WAIT
    assert "for other versions or another golden spec" in stale.reason
    assert env.state().phase is Phase.PENDING


def test_a_golden_set_that_cannot_run_waits_and_is_retried(env: Env, jobs: GoldenJobs) -> None:
    env.start(gated_flag(golden={"file": "nowhere/golden.npz"}))
    ctl = env.controller(jobs)
    tick_once(env, ctl)
    wait_until(jobs.idle, timeout=30, what="the failed golden run")
    [waiting] = tick_once(env, ctl)
    assert waiting.kind is Kind.WAIT
    assert "the golden set could not run: golden file " in waiting.reason
    assert "nowhere/golden.npz not found" in waiting.reason and "retrying in 30 s" in waiting.reason
    assert env.state().phase is Phase.PENDING and env.share() == 0
    env.clock.t += 30  # the retry time has come: a new run starts
    [retried] = tick_once(env, ctl)
    assert "running the golden set" in retried.reason


def write_shadow(env: Env, second: int, **results: int) -> None:
    """What sidecars flush for mirrored calls to digits v2: one attempt per call, by result."""
    fields = {target_prefix("shadow", "triton", "digits", "2") + ATTEMPTS: sum(results.values())}
    fields |= {target_prefix("shadow", "triton", "digits", "2") + RESULT + r: n
               for r, n in results.items()}  # fmt: skip

    async def write() -> None:
        writer = RedisSignalWriter(async_client(env.redis.url), env.prefix)
        try:
            await writer.write({("digits", second): fields})
        finally:
            await writer.close()

    asyncio.run(write())


SHADOW = {"variant": "candidate", "percent": 10, "min_agreement": 0.9, "min_compared": 100}


def test_shadow_agreement_below_the_minimum_blocks_the_rollout(env: Env) -> None:
    env.start(gated_flag(shadow=SHADOW))
    ctl = env.controller(None, redis_windows=True)
    write_shadow(env, int(env.clock.t) - 30, AGREE=80, DISAGREE=20)
    [blocked] = tick_once(env, ctl)
    assert blocked.kind is Kind.BLOCK
    assert blocked.reason == (
        "shadow gate failed: agreement 0.8000 (80/100) below min_agreement 0.9"
    )
    final = env.state()
    assert final.phase is Phase.BLOCKED and env.share() == 0
    assert final.gates["shadow"].detail["compared"] == 100
    assert final.gates["shadow"].detail["agreement"] == 0.8


def test_shadow_health_waits_for_enough_calls_then_ramps(env: Env) -> None:
    env.start(gated_flag(shadow=SHADOW))
    ctl = env.controller(None, redis_windows=True)
    write_shadow(env, int(env.clock.t), AGREE=48, DISAGREE=2)
    [waiting] = tick_once(env, ctl)
    assert waiting.kind is Kind.WAIT
    assert "50 answers compared, 100 needed" in waiting.reason
    assert env.state().gates["shadow"].verdict == "wait" and env.share() == 0
    write_shadow(env, int(env.clock.t), AGREE=47, DISAGREE=3, UNAVAILABLE=1)
    [started] = tick_once(env, ctl)
    assert started.kind is Kind.STEP and started.percent == 1
    assert started.reason == (
        "rollout started; gates passed: shadow (agreement 0.9500 over 100 compared, 1 errors)"
    )
    assert env.state().gates["shadow"].verdict == "pass" and env.share() == 1


def test_a_pending_rollout_paused_at_its_gates_resumes_to_them(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.start(gated_flag(shadow=SHADOW))
    ctl = env.controller(None, redis_windows=True)
    tick_once(env, ctl)
    code, _, err = flagctl(capsys, env.redis.url, env.prefix, "rollout", "pause", "digits")
    assert code == 0, err
    write_shadow(env, int(env.clock.t) + 1, AGREE=100)
    [paused] = tick_once(env, ctl)
    assert paused.kind is Kind.WAIT and env.share() == 0  # paused: gates not even checked
    code, _, err = flagctl(capsys, env.redis.url, env.prefix, "rollout", "resume", "digits")
    assert code == 0, err
    assert env.state().phase is Phase.PENDING  # not running at step 0 of nothing
    [started] = tick_once(env, ctl)
    assert started.kind is Kind.STEP and env.share() == 1
