"""Flags through a real redis-server: propagation, hand edits, bad flags, outages, races, ACLs."""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from servers import RedisServer, stop_process
from support import ROOT, digits_flag

from flags import RevisionConflictError, StoreAuthError, Subject, evaluate, parse_flag
from flags.admin import FlagAdmin
from flags.mutations import ramp
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from flags.sources import RedisFlagSource
from flags.store import FlagStore

pytestmark = pytest.mark.redis


def admin_for(server: RedisServer, prefix: str, actor: str = "tester") -> FlagAdmin:
    return FlagAdmin(sync_client(server.url), keys=RedisKeys(prefix), actor=actor, url=server.url)


@asynccontextmanager
async def running_source(
    url: str, prefix: str, **kwargs: Any
) -> AsyncIterator[tuple[FlagStore, RedisFlagSource]]:
    store = FlagStore(snapshot_file=kwargs.pop("snapshot_file", None))
    source = RedisFlagSource(url, store, keys=RedisKeys(prefix), **kwargs)
    await source.start()
    try:
        yield store, source
    finally:
        await source.close()


async def until(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Await ``condition`` on the event loop; returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.002)
    return time.monotonic() - start


def revision(store: FlagStore, key: str = "digits") -> int | None:
    flag = store.snapshot.get(key)
    return flag.revision if flag else None


def flagctl(
    *args: str, url: str, prefix: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "flags.cli",
            "--redis-url",
            url,
            "--prefix",
            prefix,
            "--actor",
            "ci",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_flagctl_apply_reaches_a_store_in_another_process(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    flag_file = tmp_path / "digits.json"
    flag_file.write_text(json.dumps(digits_flag()))
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-m",
            "flags.cli",
            "--redis-url",
            redis_server.url,
            "--prefix",
            prefix,
            "watch",
            "--json",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen: queue.Queue[dict[str, Any]] = queue.Queue()
    assert watcher.stdout is not None
    threading.Thread(
        target=lambda out: [seen.put(json.loads(line)) for line in out],
        args=(watcher.stdout,),
        daemon=True,
    ).start()
    try:
        assert seen.get(timeout=20) == {"ready": True, "flags": {}}
        assert flagctl("apply", str(flag_file), url=redis_server.url, prefix=prefix).returncode == 0
        first = seen.get(timeout=5)
        applied = admin_for(redis_server, prefix).get("digits").revision
        assert first == {"flag": "digits", "revision": applied, "previous": None}
        assert (
            flagctl(
                "ramp", "digits", "candidate", "5", url=redis_server.url, prefix=prefix
            ).returncode
            == 0
        )
        assert seen.get(timeout=5) == {
            "flag": "digits",
            "revision": applied + 1,
            "previous": applied,
        }
    finally:
        stop_process(watcher)  # type: ignore[arg-type]


def test_raw_set_without_publish_is_seen_within_a_second(
    redis_server: RedisServer, prefix: str
) -> None:
    written = admin_for(redis_server, prefix).apply(parse_flag(digits_flag()), reason="setup")
    keys = RedisKeys(prefix)

    async def scenario() -> float:
        async with running_source(redis_server.url, prefix) as (store, _):
            assert revision(store) == written.revision
            edited = digits_flag(revision=7, enabled=False)
            redis_server.client().set(keys.flag("digits"), json.dumps(edited))  # no PUBLISH
            return await until(lambda: revision(store) == 7, 1.0, "raw SET to be picked up")

    assert asyncio.run(scenario()) < 1.0


def test_invalid_raw_flag_is_rejected_and_last_good_keeps_serving(
    redis_server: RedisServer, prefix: str
) -> None:
    good = admin_for(redis_server, prefix).apply(parse_flag(digits_flag()), reason="setup").revision
    keys = RedisKeys(prefix)

    async def scenario() -> None:
        async with running_source(redis_server.url, prefix) as (store, _):
            redis_server.client().set(
                keys.flag("digits"), json.dumps(digits_flag(revision=2, default_variant="ghost"))
            )
            redis_server.client().publish(
                keys.channel, json.dumps({"key": "digits", "revision": 2})
            )
            await until(lambda: store.health.rejected_total == 1, 2.0, "the rejection")
            assert revision(store) == good
            r = evaluate(store.snapshot, "digits", Subject("alice@example.com"))
            assert (r.variant, r.revision) == ("candidate", good)
            assert "unknown variant 'ghost'" in store.health.rejections["digits"].reason

    asyncio.run(scenario())


def test_redis_outage_serves_last_good_marks_stale_and_resyncs(
    fresh_redis: RedisServer, prefix: str
) -> None:
    before_loss = admin_for(fresh_redis, prefix).apply(parse_flag(digits_flag()), reason="setup")

    async def scenario() -> None:
        async with running_source(fresh_redis.url, prefix, reconcile_interval=0.05) as (store, _):
            assert not store.health.stale
            fresh_redis.kill()
            await until(lambda: store.health.stale, 5.0, "the store to notice the outage")
            assert (
                evaluate(store.snapshot, "digits", Subject("alice@example.com")).variant
                == "candidate"
            )
            fresh_redis.start()  # comes back empty: no persistence in tests
            await until(
                lambda: store.health.missing_flags == ("digits",),
                10.0,
                "the empty Redis to be noticed as data loss",
            )
            assert store.health.stale and store.health.source_status == "ok"
            assert store.health.data_loss_total == 1
            assert "digits" in (store.health.stale_reason or "")
            assert revision(store) == before_loss.revision  # an empty Redis wipes no flag
            restored = admin_for(fresh_redis, prefix).apply(
                parse_flag(digits_flag(enabled=False)), reason="restore"
            )
            # A new epoch: the re-applied flag is newer than anything seen before the loss.
            assert restored.revision > before_loss.revision
            await until(
                lambda: not store.health.stale and not store.snapshot["digits"].enabled,
                5.0,
                "the resync",
            )
            assert store.health.missing_flags == () and store.health.data_loss_total == 1

    asyncio.run(scenario())


def test_store_starts_from_snapshot_file_while_redis_is_down(tmp_path: Path, prefix: str) -> None:
    snapshot = tmp_path / "flags.snapshot.json"
    FlagStore(snapshot_file=snapshot).sync(
        {"digits": json.dumps(digits_flag(revision=3))}, complete=True
    )

    async def scenario() -> None:
        dead = "redis://127.0.0.1:1/0"
        async with running_source(dead, prefix, snapshot_file=snapshot, start_timeout=0.3) as (
            store,
            _,
        ):
            assert revision(store) == 3 and store.health.stale

    asyncio.run(scenario())


def test_two_writers_one_conflict_no_lost_update(redis_server: RedisServer, prefix: str) -> None:
    alice, bob = admin_for(redis_server, prefix, "alice"), admin_for(redis_server, prefix, "bob")
    first = alice.apply(parse_flag(digits_flag()), reason="setup").revision
    read_by_alice, read_by_bob = alice.get("digits"), bob.get("digits")
    assert read_by_alice.spec is not None and read_by_bob.spec is not None
    alice._write(ramp(read_by_alice.spec, "candidate", 5), read_by_alice, action="ramp", reason="a")
    with pytest.raises(RevisionConflictError, match=f"it is now {first + 1}"):
        bob._write(ramp(read_by_bob.spec, "candidate", 50), read_by_bob, action="ramp", reason="b")
    stored = alice.get("digits")
    assert stored.revision == first + 1 and stored.spec is not None
    assert stored.spec.allocation is not None and stored.spec.allocation.split["candidate"] == 5
    assert [e.fields["actor"] for e in alice.audit("digits")] == ["alice", "alice"]


def test_racing_writers_every_success_is_kept(redis_server: RedisServer, prefix: str) -> None:
    first = (
        admin_for(redis_server, prefix).apply(parse_flag(digits_flag()), reason="setup").revision
    )
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def writer(n: int) -> None:
        admin = admin_for(redis_server, prefix, f"op{n}")
        barrier.wait(timeout=10)
        try:
            admin.update(
                "digits", lambda s: ramp(s, "candidate", n + 1), action="ramp", reason="race"
            )
            outcomes.append("ok")
        except RevisionConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    wins = outcomes.count("ok")
    assert len(outcomes) == 8 and wins >= 1
    final = admin_for(redis_server, prefix).get("digits")
    assert final.revision == first + wins
    assert len(admin_for(redis_server, prefix).audit("digits", limit=100)) == 1 + wins


def test_read_only_acl_user_loads_flags_but_cannot_write(
    fresh_redis: RedisServer, prefix: str
) -> None:
    first = admin_for(fresh_redis, prefix).apply(parse_flag(digits_flag()), reason="setup").revision
    fresh_redis.client().execute_command(
        "ACL",
        "SETUSER",
        "sidecar",
        "on",
        ">s3cret",
        "resetkeys",
        f"~{prefix}*",
        "resetchannels",
        f"&{prefix}*",
        "-@all",
        "+@read",
        "+@connection",
        "+subscribe",
    )
    url = f"redis://sidecar:s3cret@127.0.0.1:{fresh_redis.port}/0"

    async def load() -> int | None:
        async with running_source(url, prefix) as (store, _):
            return revision(store)

    assert asyncio.run(load()) == first
    reader = FlagAdmin(sync_client(url), keys=RedisKeys(prefix), url=url)
    assert reader.get("digits").revision == first
    with pytest.raises(StoreAuthError, match="permission denied") as info:
        reader.apply(parse_flag(digits_flag(enabled=False)), reason="should fail")
    assert "s3cret" not in str(info.value)
    assert admin_for(fresh_redis, prefix).get("digits").revision == first


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "nope"), "error: no flag named 'nope'"),
        (("ramp", "digits", "nope", "5"), "error: flag 'digits' has no variant 'nope'"),
        (("ramp", "digits", "control", "5"), "is the default variant"),
        (("explain", "digits", "u1", "--attr", "broken"), "'broken' is not NAME=VALUE"),
    ],
)
def test_flagctl_errors_are_one_clear_line(
    redis_server: RedisServer, prefix: str, args: tuple[str, ...], message: str
) -> None:
    admin_for(redis_server, prefix).apply(parse_flag(digits_flag()), reason="setup")
    result = flagctl(*args, url=redis_server.url, prefix=prefix)
    assert result.returncode in (1, 2)
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_flagctl_unreachable_redis(prefix: str) -> None:
    result = flagctl("list", url="redis://127.0.0.1:1/0", prefix=prefix)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: cannot reach Redis at redis://127.0.0.1:1/0")
    assert "Traceback" not in result.stderr


def test_flagctl_invalid_file_lists_every_issue(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(digits_flag(default_variant="ghost")))
    result = flagctl("apply", str(bad), url=redis_server.url, prefix=prefix)
    assert result.returncode == 1
    assert "digits: default_variant: unknown variant 'ghost'" in result.stderr
    assert (
        flagctl("show", "digits", url=redis_server.url, prefix=prefix).returncode == 1
    )  # nothing written


def test_flagctl_apply_of_a_stale_file_is_a_conflict(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    admin = admin_for(redis_server, prefix)
    first = admin.apply(parse_flag(digits_flag()), reason="v1").revision
    admin.update("digits", lambda s: ramp(s, "candidate", 5), action="ramp", reason="v2")
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(digits_flag(revision=first)))
    result = flagctl("apply", str(stale), url=redis_server.url, prefix=prefix)
    assert result.returncode == 3
    assert f"you read revision {first}, it is now {first + 1}" in result.stderr


def test_flagctl_verbs_with_json_output(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    flag_file = tmp_path / "digits.json"
    flag_file.write_text(json.dumps(digits_flag()))
    url = redis_server.url

    def run_json(*args: str) -> Any:
        result = flagctl(*args, "--json", url=url, prefix=prefix)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    assert run_json("validate", str(flag_file)) == {"valid": True, "flags": ["digits"]}
    [applied] = run_json("apply", str(flag_file), "--reason", "launch")
    first = applied["revision"]
    assert applied == {"flag": "digits", "revision": first} and first > 1 << 50  # an epoch
    assert run_json("ramp", "digits", "candidate", "50")["split"] == {
        "control": 50.0,
        "candidate": 50.0,
    }
    assert run_json("allow", "digits", "control", "alice@example.com")["revision"] == first + 2
    assert run_json("explain", "digits", "alice@example.com")["variant"] == "control"
    assert run_json("disable", "digits")["enabled"] is False
    assert run_json("enable", "digits")["enabled"] is True
    rolled = run_json("rollback", "digits", "--reason", "p99 regression")
    assert (rolled["enabled"], rolled["split"]["candidate"]) == (False, 0.0)
    assert [r["flag"] for r in run_json("list")] == ["digits"]
    shown = run_json("show", "digits")
    assert shown["revision"] == first + 5 and shown["recent_audit"][0]["reason"] == "p99 regression"
    history = run_json("audit", "digits")
    assert [h["action"] for h in history] == [
        "rollback",
        "enable",
        "disable",
        "allow",
        "ramp",
        "apply",
    ]
    assert history[0]["actor"] == "ci" and "enabled: True -> False" in history[0]["changes"]
