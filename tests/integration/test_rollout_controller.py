"""The rollout controller against a real redis-server, with in-memory windows and a fake clock.

The windows are what sidecars would have recorded (the signals package's data model); the
flag, the rollout state, the audit stream, the lease and the fence are all real Redis. The clock
is injected, so a five-step ramp with 10 s holds runs in well under a second.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import MappingProxyType
from typing import Any

import pytest
from servers import RedisServer, wait_until
from support import digits_flag

from flags import parse_flag
from flags.admin import FlagAdmin
from flags.errors import FencedError
from flags.mutations import ramp, share
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from rollout.controller import Controller, ControllerConfig
from rollout.decide import Kind
from rollout.state import Phase, RolloutState
from rollout.store import RolloutStore
from rollout.windows import MemoryWindows
from signals.latency import BOUNDARY_COUNT, bucket_index
from signals.model import Group, TargetKey, VersionStats

pytestmark = pytest.mark.redis
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def stats(attempts: int, failures: int = 0, latency_s: float = 0.01) -> VersionStats:
    counts = [0] * (BOUNDARY_COUNT + 1)
    counts[bucket_index(latency_s)] = attempts
    errors = MappingProxyType({"UNAVAILABLE": failures} if failures else {})
    return VersionStats(attempts, errors, tuple(counts))


class Traffic:
    """One second of fleet traffic at ``rate`` req/s, split by the flag's current share."""

    def __init__(self, windows: MemoryWindows, admin: FlagAdmin) -> None:
        self.windows = windows
        self.admin = admin

    def second(
        self, t: float, rate: int = 200, *, fail: float = 0.0, latency_s: float = 0.01
    ) -> None:
        spec = self.admin.get("digits").spec
        assert spec is not None
        pct = share(spec, "candidate") if spec.default_variant == "control" else 100.0
        cand = round(rate * pct / 100)
        sec = int(t)
        key = TargetKey("digits", Group.EXPOSED, "triton", "digits", "2")
        if cand:
            self.windows.add(sec, key, stats(cand, round(cand * fail), latency_s))
        if rate - cand:
            control = TargetKey("digits", Group.EXPOSED, "triton", "digits", "1")
            self.windows.add(sec, control, stats(rate - cand))


def rollout_flag(**guardrails: Any) -> dict[str, Any]:
    doc = digits_flag(
        allocation={"coverage": 100, "split": {"control": 100}},
        ramp={"variant": "candidate", "steps": [1, 5, 20, 50, 100], "hold_seconds": 10},
        guardrails={"min_requests": 20, "window_seconds": 60, **guardrails},
    )
    doc.pop("revision", None)
    return doc


@pytest.fixture
def env(redis_server: RedisServer, prefix: str) -> Iterator[dict[str, Any]]:
    client = sync_client(redis_server.url)
    keys = RedisKeys(prefix)
    admin = FlagAdmin(client, keys=keys, actor="ops")
    windows = MemoryWindows()
    clock = Clock()
    yield {
        "client": client,
        "keys": keys,
        "admin": admin,
        "windows": windows,
        "clock": clock,
        "traffic": Traffic(windows, admin),
        "store": RolloutStore(client, keys=keys, actor="ops"),
    }
    client.close()


def controller(env: dict[str, Any], replica: str = "a", ttl: float = 5.0) -> Controller:
    return Controller(
        env["client"],
        env["windows"],
        keys=env["keys"],
        config=ControllerConfig(replica=replica, lease_ttl_s=ttl, actor=f"controller/{replica}"),
        clock=env["clock"],
    )


def start(env: dict[str, Any], doc: dict[str, Any]) -> None:
    env["admin"].apply(parse_flag(doc), reason="set up")
    now = env["clock"]()
    state = RolloutState(
        flag="digits",
        variant="candidate",
        phase=Phase.PENDING,
        steps=[1, 5, 20, 50, 100],
        started_at=now,
    )
    env["store"].write(state, None, action="rollout.start", reason="test")


def run_seconds(env: dict[str, Any], ctl: Controller, n: int, **traffic: Any) -> list[Any]:
    done = []
    for _ in range(n):
        env["clock"].t += 1
        env["traffic"].second(env["clock"].t, **traffic)
        done += ctl.tick()
    return done


def state_of(env: dict[str, Any]) -> RolloutState:
    stored = env["store"].get("digits")
    assert stored is not None
    return stored.state  # type: ignore[no-any-return]


def audit_actions(env: dict[str, Any]) -> list[str]:
    return [e.fields["action"] for e in reversed(env["admin"].audit("digits", limit=100))]


def test_a_healthy_candidate_ramps_through_every_step_and_is_promoted(env: dict[str, Any]) -> None:
    start(env, rollout_flag())
    ctl = controller(env)
    percents = []
    for _ in range(200):
        env["clock"].t += 1
        env["traffic"].second(env["clock"].t)
        for _, action in ctl.tick():
            if action.kind is Kind.STEP:
                percents.append(action.percent)
        if state_of(env).phase is Phase.PROMOTED:
            break
    assert percents == [1, 5, 20, 50, 100]
    spec = env["admin"].get("digits").spec
    assert spec.default_variant == "candidate" and spec.allocation is None and spec.ramp is None
    final = state_of(env)
    assert final.baseline is not None and final.baseline.attempts > 0  # recorded before 100 %
    assert [e.event for e in final.history] == ["step"] * 5 + ["promoted"]
    holds = [b.at - a.at for a, b in zip(final.history, final.history[1:], strict=False)]
    assert all(h >= 10 for h in holds[1:])  # each step held at least hold_seconds
    # the audit tells the whole story, flag writes and decisions interleaved, oldest first
    assert audit_actions(env) == [
        "apply", "rollout.start",
        *["rollout.step"] * 10,
        "rollout.promote", "rollout.promoted",
    ]  # fmt: skip


class Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_a_candidate_failing_at_the_5_percent_step_is_rolled_back_with_evidence(
    env: dict[str, Any], webhook: str, caplog: pytest.LogCaptureFixture
) -> None:
    start(env, rollout_flag(notify=webhook))
    ctl = controller(env)
    run_seconds(env, ctl, 12)  # step 1 applied, then held 10 s: now at 5 %
    assert state_of(env).percent == 5
    first_failure = env["clock"].t + 1
    with caplog.at_level(logging.WARNING, logger="trafficsplit.rollout"):
        for _ in range(10):
            run_seconds(env, ctl, 1, fail=1.0)
            if state_of(env).phase is Phase.ROLLED_BACK:
                break
    final = state_of(env)
    assert final.phase is Phase.ROLLED_BACK
    assert env["clock"].t - first_failure <= 3  # 10 failing req/s: the short window fires fast
    spec = env["admin"].get("digits").spec
    assert share(spec, "candidate") == 0 and spec.allocation.split["control"] == 100
    rollback = next(
        e for e in env["admin"].audit("digits") if e.fields["action"] == "rollout.rolled_back"
    )
    evidence = json.loads(rollback.fields["evidence"])
    assert evidence["fired"][0]["rule"] == "short_max_error_rate"
    assert evidence["candidate_short"]["failures"] > 0 and evidence["control_short"]["attempts"] > 0
    assert ctl.metrics.rollbacks.labels("digits", "short_max_error_rate")._value.get() == 1
    line = next(json.loads(r.message) for r in caplog.records if "rolled_back" in r.message)
    assert line["event"] == "rollout_rolled_back" and line["rule"] == "short_max_error_rate"
    wait_until(lambda: Hook.received, timeout=5, what="the webhook POST")
    assert "rolled back 'digits'" in Hook.received[0]["text"]
    assert Hook.received[0]["evidence"]["fired"][0]["rule"] == "short_max_error_rate"
    # nothing more happens after a rollback
    assert run_seconds(env, ctl, 3, fail=1.0) == []


def test_a_dead_webhook_never_blocks_the_rollback(env: dict[str, Any]) -> None:
    start(env, rollout_flag(notify="http://127.0.0.1:9/nobody-listens"))
    ctl = controller(env)
    run_seconds(env, ctl, 12)
    run_seconds(env, ctl, 4, fail=1.0)
    assert state_of(env).phase is Phase.ROLLED_BACK


def test_a_slow_candidate_is_rolled_back_by_the_latency_rule(env: dict[str, Any]) -> None:
    start(env, rollout_flag())
    ctl = controller(env)
    run_seconds(env, ctl, 12)
    for _ in range(30):
        run_seconds(env, ctl, 1, latency_s=0.03)  # p99 x3 the control's 10 ms
        if state_of(env).phase is Phase.ROLLED_BACK:
            break
    final = state_of(env)
    assert final.phase is Phase.ROLLED_BACK
    assert final.last_verdict is not None
    assert [f["rule"] for f in final.last_verdict["fired"]] == ["max_p99_latency_ratio"]


def test_a_candidate_with_too_few_requests_is_neither_judged_nor_advanced(
    env: dict[str, Any],
) -> None:
    start(env, rollout_flag(min_requests=1000, short_min_requests=1000))
    ctl = controller(env)
    run_seconds(env, ctl, 40, rate=10, fail=1.0)  # at 1 %: 0 or 1 candidate request a second
    final = state_of(env)
    assert final.phase is Phase.RUNNING and final.step == 0
    assert final.last_verdict is not None and final.last_verdict["status"] == "not_enough_data"


def test_two_controllers_exactly_one_acts_and_a_stale_leader_is_fenced_off(
    env: dict[str, Any],
) -> None:
    start(env, rollout_flag())
    a, b = controller(env, "a", ttl=0.3), controller(env, "b", ttl=0.3)
    env["clock"].t += 1
    acted = [bool(a.tick()), bool(b.tick())]
    assert acted == [True, False]  # a took the lease; b stands by
    assert state_of(env).step == 0
    old_fence = a.lease.fence
    # a dies (stops renewing): b takes over within the lease time and resumes
    wait_until(lambda: b.lease.ensure(), timeout=3, what="the standby taking the lease")
    assert b.lease.fence is not None and old_fence is not None
    assert b.lease.fence.token > old_fence.token
    run_seconds(env, b, 11)
    assert state_of(env).step == 1  # resumed from the stored state: step 2, not step 1 again
    # the old leader wakes up and writes with its old token: refused atomically
    stale = FlagAdmin(env["client"], keys=env["keys"], actor="a", fence=old_fence)
    before = env["admin"].get("digits").raw
    with pytest.raises(FencedError):
        stale.update("digits", lambda s: ramp(s, "candidate", 50), action="x", reason="stale")
    assert env["admin"].get("digits").raw == before
    assert a.tick() == []  # its renew fails; it cannot take the lease b holds


def test_a_standby_resuming_after_a_half_done_step_does_not_apply_it_twice(
    env: dict[str, Any],
) -> None:
    start(env, rollout_flag())
    ctl = controller(env)
    run_seconds(env, ctl, 1)
    assert state_of(env).step == 0
    # the leader wrote the flag for step 2 and died before writing the state
    env["admin"].update(
        "digits", lambda s: ramp(s, "candidate", 5), action="rollout.step", reason=""
    )
    writes = audit_actions(env).count("rollout.step")
    standby = controller(env, "b")
    standby.lease.fence = None
    ctl.lease.release()
    env["clock"].t += 1
    env["traffic"].second(env["clock"].t)
    [(_flag, action)] = standby.tick()
    assert action.reason.startswith("recovered")
    assert state_of(env).step == 1
    # no flag write: only the state catches up
    assert audit_actions(env).count("rollout.step") == writes
    assert audit_actions(env)[-1] == "rollout.step_recovered"
    assert share(env["admin"].get("digits").spec, "candidate") == 5


def test_a_hand_edit_during_a_rollout_pauses_it(env: dict[str, Any]) -> None:
    start(env, rollout_flag())
    ctl = controller(env)
    run_seconds(env, ctl, 1)
    env["admin"].update("digits", lambda s: ramp(s, "candidate", 42), action="ramp", reason="")
    run_seconds(env, ctl, 1)
    final = state_of(env)
    assert final.phase is Phase.PAUSED and "changed outside the rollout" in final.history[-1].detail
    assert share(env["admin"].get("digits").spec, "candidate") == 42  # the operator's edit stays


def test_redis_down_means_no_leader_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    from servers import free_port

    dead = sync_client(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    ctl = Controller(dead, MemoryWindows(), config=ControllerConfig(replica="x"))
    with caplog.at_level(logging.WARNING, logger="trafficsplit.rollout"):
        assert ctl.tick() == [] and ctl.tick() == []
    lines = [json.loads(r.message) for r in caplog.records]
    assert [line["event"] for line in lines] == ["redis_unavailable"]
    assert "Connection refused" in lines[0]["error"] or "connect" in lines[0]["error"].lower()
    assert ctl.metrics.leader._value.get() == 0
