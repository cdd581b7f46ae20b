"""``flagctl rollout ...`` against a real redis-server: every verb, its audit, its errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from servers import RedisServer
from support import digits_flag, run_flagctl

from flags import parse_flag
from flags.admin import FlagAdmin
from flags.mutations import share
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from rollout.store import state_key

pytestmark = pytest.mark.redis


def flagctl(
    capsys: pytest.CaptureFixture[str], url: str, prefix: str, *args: str
) -> tuple[int, str, str]:
    return run_flagctl(capsys, *args, url=url, prefix=prefix, actor="ops")


@pytest.fixture
def cli(redis_server: RedisServer, prefix: str, capsys: pytest.CaptureFixture[str]) -> Any:
    admin = FlagAdmin(sync_client(redis_server.url), keys=RedisKeys(prefix), actor="ops")
    doc = digits_flag(allocation={"coverage": 100, "split": {"control": 95, "candidate": 5}})
    admin.apply(parse_flag(doc), reason="setup")

    def run(*args: str) -> tuple[int, str, str]:
        return flagctl(capsys, redis_server.url, prefix, *args)

    run.admin = admin  # type: ignore[attr-defined]
    return run


def as_json(cli: Any, *args: str) -> dict[str, Any]:
    code, out, err = cli(*args, "--json")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def test_start_pause_resume_abort_are_written_and_audited(cli: Any) -> None:
    started = as_json(cli, "rollout", "start", "digits", "--reason", "ship v2")
    assert (started["phase"], started["steps"], started["step"]) == (
        "pending",
        [1, 5, 20, 50, 100],
        -1,
    )
    assert as_json(cli, "rollout", "pause", "digits")["phase"] == "paused"
    # paused before its first step: resumed to pending (the gates, then step 1), not running
    assert as_json(cli, "rollout", "resume", "digits")["phase"] == "pending"
    status = as_json(cli, "rollout", "status", "digits")
    assert status["flag_share"] == 5 and status["controller_leader"] is None
    code, out, _ = cli("rollout", "status", "digits")
    assert code == 0 and "pending" in out and "controller: none running" in out
    aborted = as_json(cli, "rollout", "abort", "digits", "--reason", "not today")
    assert aborted["phase"] == "aborted"
    spec = cli.admin.get("digits").spec
    assert share(spec, "candidate") == 0
    actions = [e.fields["action"] for e in reversed(cli.admin.audit("digits"))]
    assert actions == [
        "apply", "rollout.start", "rollout.pause", "rollout.resume", "rollout.abort",
        "rollout.abort",
    ]  # fmt: skip
    reasons = [e.fields["reason"] for e in cli.admin.audit("digits")]
    assert "not today" in reasons and "ship v2" in reasons


def test_promote_makes_the_candidate_the_default_and_ends_the_experiment(cli: Any) -> None:
    as_json(cli, "rollout", "start", "digits")
    assert as_json(cli, "rollout", "promote", "digits")["phase"] == "promoted"
    spec = cli.admin.get("digits").spec
    assert spec.default_variant == "candidate" and spec.allocation is None and spec.ramp is None
    audit = cli.admin.audit("digits", limit=2)
    assert {e.fields["action"] for e in audit} == {"rollout.promote"}
    # a finished rollout can be started afresh only if the flag still has a ramp section
    code, _, err = cli("rollout", "start", "digits")
    assert code == 1 and "has no `ramp` section" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("rollout", "status", "nope"), "no flag named 'nope'"),
        (("rollout", "pause", "digits"), "has no rollout: `flagctl rollout start digits`"),
        (("rollout", "resume", "digits"), "has no rollout"),
    ],
)
def test_bad_requests_get_one_line_and_no_traceback(
    cli: Any, args: tuple[str, ...], message: str
) -> None:
    code, _, err = cli(*args)
    assert code == 1
    assert message in err and "Traceback" not in err


def test_starting_twice_or_resuming_a_running_rollout_is_refused(cli: Any) -> None:
    as_json(cli, "rollout", "start", "digits")
    code, _, err = cli("rollout", "start", "digits")
    assert code == 1 and "already has a pending rollout" in err
    code, _, err = cli("rollout", "resume", "digits")
    assert code == 1 and "is pending; cannot resume it" in err


def test_an_invalid_state_in_redis_is_reported_and_start_replaces_it(cli: Any, prefix: str) -> None:
    cli.admin.client.set(state_key(RedisKeys(prefix), "digits"), b'{"flag": "digits", "phase": 7}')
    code, _, err = cli("rollout", "status", "digits")
    assert code == 1 and "rollout state of 'digits' is invalid" in err and "Traceback" not in err
    assert as_json(cli, "rollout", "start", "digits")["phase"] == "pending"


def test_ramp_rule_on_the_command_line(cli: Any) -> None:
    doc = digits_flag(
        rules=[{"name": "pro", "when": {"attribute": "tier", "op": "eq", "value": "pro"},
                "split": {"control": 100}}],
    )  # fmt: skip
    doc.pop("allocation")
    cli.admin.apply(parse_flag(doc), reason="segment", force=True)
    code, _, err = cli("ramp", "digits", "candidate", "10")
    assert code == 1 and "--rule" in err
    code, _, err = cli("ramp", "digits", "candidate", "10", "--rule", "pro")
    assert code == 0, err
    spec = cli.admin.get("digits").spec
    assert spec.allocation is None and spec.rules[0].split == {"control": 90.0, "candidate": 10.0}
