"""Rollouts end to end: real redis-server, tritonserver, sidecar and controller processes.

Traffic is a paced ~200 req/s of random users through the sidecar; the sidecar records signals
into Redis and the controller (a real ``trafficsplit-controller`` process, 1 s tick) reads them.
The scenario is shared with the benchmark (``bench/rollout.py``), which repeats it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import wait_until

from bench.rollout import (
    ControllerProcess,
    Stack,
    candidate_share,
    failing_stack,
    rollback_trial,
    start_rollout,
    state,
)
from flags.redis_keys import RedisKeys
from rollout.lease import LeaseKeys
from rollout.state import Phase

pytestmark = [pytest.mark.redis, pytest.mark.triton]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with failing_stack(200.0, tmp_path_factory.mktemp("rollout")) as st:
        yield st


def log_tail(path: Path) -> str:
    return path.read_text()[-3000:] if path.exists() else ""


def test_a_candidate_failing_at_the_5_percent_step_is_rolled_back_within_10_s(
    stack: Stack,
) -> None:
    log = stack.workdir / "controller-fail.log"
    controller = ControllerProcess(stack.redis.url, "solo", log)
    try:
        # The error rules are under test here (the latency rule has its own test below): with
        # it off, a tail-latency spike of a loaded 2-core machine cannot decide first.
        trial = rollback_trial(stack, timeout=90, guardrails={"max_p99_latency_ratio": None})
    finally:
        controller.stop()
    assert trial.seconds <= 10.0, log_tail(log)
    assert trial.user_errors == 0, stack.load.errors[-5:]  # every user was served (fallback)
    assert candidate_share(stack) == 0.0
    fired = trial.evidence["fired"]
    rules = {f["rule"] for f in fired}
    # An error rule catches it (others, the relative test, may fire in the same tick).
    assert rules & {"short_max_error_rate", "max_error_rate"}, rules
    assert trial.evidence["candidate_short"]["failures"] > 0
    assert trial.evidence["control_long"]["attempts"] > trial.evidence["candidate_long"]["attempts"]
    print(f"time to rollback: {trial.seconds:.2f} s; evidence: {json.dumps(fired)}")


def test_two_controllers_one_acts_and_the_standby_resumes_after_the_leader_is_killed(
    stack: Stack,
) -> None:
    # What is tested is the lease and the hand-over; the latency rule is off, so a tail-latency
    # spike of a loaded test machine cannot roll the healthy candidate back mid-test.
    start_rollout(stack, hold_s=1.0, min_requests=10, guardrails={"max_p99_latency_ratio": None})
    logs = stack.workdir
    ttl = ["--lease-ttl", "2"]
    a = ControllerProcess(stack.redis.url, "a", logs / "controller-a.log", *ttl)
    b = ControllerProcess(stack.redis.url, "b", logs / "controller-b.log", *ttl)
    lease = LeaseKeys.of(RedisKeys("bench:")).lease
    client = stack.admin.client
    try:
        holder = wait_until(lambda: client.get(lease), timeout=20, what="a leader").decode()
        leader, standby = (a, b) if holder.startswith("a:") else (b, a)
        wait_until(lambda: candidate_share(stack) >= 5.0, timeout=60, what="step 2")
        leader.kill()
        killed_at = time.monotonic()
        wait_until(
            lambda: (
                (v := client.get(lease)) is not None
                and v.decode().startswith(f"{standby.replica}:")
            ),
            timeout=10,
            what="the standby taking the lease",
        )
        takeover_s = time.monotonic() - killed_at
        try:
            wait_until(
                lambda: (s := state(stack)) is not None and s.phase is Phase.PROMOTED,
                timeout=90,
                what="the standby finishing the rollout",
            )
        except AssertionError:
            final = state(stack)
            raise AssertionError(
                f"not promoted: {final and final.phase}, history "
                f"{final and [(e.event, e.detail) for e in final.history]}, verdict "
                f"{final and final.last_verdict}"
            ) from None
    finally:
        for controller in (a, b):
            controller.stop()
    assert takeover_s <= 2.0 + 1.5  # the lease time plus one tick
    entries = list(reversed(stack.admin.audit("digits", limit=200)))
    since = max(i for i, e in enumerate(entries) if e.fields.get("action") == "rollout.start")
    # flag writes (they carry a revision) of each step: exactly one per step, none repeated
    flag_steps = [
        e.fields["changes"]
        for e in entries[since:]
        if e.fields.get("action") == "rollout.step" and e.fields.get("revision")
    ]
    assert len(flag_steps) == 5, flag_steps
    actors = {
        e.fields["actor"] for e in entries[since:] if e.fields.get("action") != "rollout.start"
    }
    assert actors == {"trafficsplit-controller/a", "trafficsplit-controller/b"}
    final = state(stack)
    assert final is not None
    # each step recorded once: by the controller that applied it, or, when the leader was killed
    # between its flag write and its state write, by the standby as "step_recovered"
    steps = [e.percent for e in final.history if e.event in ("step", "step_recovered")]
    assert steps == [1, 5, 20, 50, 100]
    spec = stack.admin.get("digits").spec
    assert spec is not None and spec.default_variant == "candidate"


def test_a_slow_candidate_is_rolled_back_by_the_latency_rule(stack: Stack) -> None:
    """v2 turns 50 ms slow (v1 answers in about a millisecond): p99 far above 1.5x the control's
    and 2 ms more; no error, so only the latency rule can fire. Last in the module: its slow
    samples stay in the shared stack's 300 s window."""
    log = stack.workdir / "controller-slow.log"
    controller = ControllerProcess(stack.redis.url, "slow", log)
    try:
        trial = rollback_trial(stack, timeout=90, fault="sleep 0.05")
    finally:
        controller.stop()
    assert trial.seconds <= 20.0, log_tail(log)
    assert trial.user_errors == 0
    assert candidate_share(stack) == 0.0
    assert {f["rule"] for f in trial.evidence["fired"]} == {"max_p99_latency_ratio"}
    print(f"time to rollback (slow candidate): {trial.seconds:.2f} s")
