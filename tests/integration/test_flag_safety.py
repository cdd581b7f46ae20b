"""Flags that fail safe, through a real redis-server: one validator everywhere, data loss versus
deletion, revisions that survive a FLUSHALL, broken documents flagctl can always show and repair,
and credentials that are refused loudly."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from servers import RedisServer, wait_until
from support import digits_flag, run_flagctl

from flags import StoreAuthError, parse_flag
from flags.admin import FlagAdmin
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from flags.schema import MAX_REVISION
from flags.sources import FileFlagSource, RedisFlagSource
from flags.store import FlagStore, SourceStatus
from sidecar.launcher import SidecarProcess

pytestmark = pytest.mark.redis

BROKEN = Path(__file__).resolve().parent.parent / "fixtures" / "flags" / "broken"
FIXTURES = sorted(p.name for p in BROKEN.glob("*.json"))


def flagctl(
    capsys: pytest.CaptureFixture[str], *args: str, url: str, prefix: str
) -> tuple[int, str, str]:
    return run_flagctl(capsys, *args, url=url, prefix=prefix)


def issue_lines(stderr: str) -> list[str]:
    """flagctl's indented issue lines, without the "<flag>: " / "#<entry>: " prefix."""
    lines = [line[2:] for line in stderr.splitlines() if line.startswith("  ")]
    return [
        line.split(": ", 1)[1] if line.startswith(("digits: ", "#0: ")) else line for line in lines
    ]


async def until(condition: Callable[[], object], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


def admin_for(url: str, prefix: str) -> FlagAdmin:
    return FlagAdmin(sync_client(url), keys=RedisKeys(prefix), actor="ci", url=url)


def redis_rejections(url: str, prefix: str, documents: dict[str, bytes]) -> dict[str, Any]:
    """Store each document raw in Redis; what a sidecar's source makes of each."""
    keys = RedisKeys(prefix)
    client = sync_client(url)
    for key, raw in documents.items():
        client.set(keys.flag(key), raw)
        client.sadd(keys.index, key)

    async def load() -> dict[str, Any]:
        store = FlagStore()
        source = RedisFlagSource(url, store, keys=keys)
        await source.start()
        try:
            await until(lambda: len(store.health.rejections) == len(documents), 5, "rejections")
            return dict(store.health.rejections)
        finally:
            await source.close()

    return asyncio.run(load())


def test_every_broken_fixture_gets_the_same_message_everywhere(
    redis_server: RedisServer, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = redis_server.url
    in_redis = redis_rejections(
        url, prefix, {name.removesuffix(".json"): (BROKEN / name).read_bytes() for name in FIXTURES}
    )
    for name in FIXTURES:
        expected = list(in_redis[name.removesuffix(".json")].issues)
        assert expected, name
        # a flag stored under its own name; the fixtures' documents say key "digits"
        expected = [i for i in expected if not i.startswith("key: is 'digits' but is stored")]

        code, _, err = flagctl(capsys, "validate", str(BROKEN / name), url=url, prefix=prefix)
        assert code == 1 and "Traceback" not in err, name
        assert issue_lines(err) == expected, name
        code, _, err = flagctl(capsys, "apply", str(BROKEN / name), url=url, prefix=prefix)
        assert code == 1 and issue_lines(err) == expected, name

        path = tmp_path / name
        shutil.copy(BROKEN / name, path)
        store = FlagStore()
        FileFlagSource(path, store).reload()
        [rejection] = store.health.rejections.values()
        assert list(rejection.issues) == expected, name
        assert len(store.snapshot) == 0
    assert redis_server.client().get(RedisKeys(prefix).flag("digits")) is None  # none written


def test_a_raw_del_is_data_loss_and_flagctl_delete_removes_even_the_last_flag(
    redis_server: RedisServer, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url, keys = redis_server.url, RedisKeys(prefix)
    applied = admin_for(url, prefix).apply(parse_flag(digits_flag()), reason="setup")

    async def scenario() -> None:
        store = FlagStore()
        source = RedisFlagSource(url, store, keys=keys, reconcile_interval=0.05)
        await source.start()
        try:
            redis_server.client().delete(keys.flag("digits"))  # no tombstone, no publish
            await until(lambda: store.health.missing_flags == ("digits",), 1.5, "the loss")
            assert store.snapshot["digits"].revision == applied.revision  # still served
            assert store.health.stale and store.health.data_loss_total == 1
            assert "digits" in (store.health.stale_reason or "")

            code, out, err = flagctl(capsys, "list", "--json", url=url, prefix=prefix)
            assert code == 0 and json.loads(out)[0]["present"] is False, err

            code, _, err = flagctl(capsys, "delete", "digits", url=url, prefix=prefix)
            assert code == 2 and "--reason" in err  # a deliberate removal says why
            code, out, err = flagctl(
                capsys, "delete", "digits", "--reason", "retired", url=url, prefix=prefix
            )
            assert code == 0 and "deleted digits" in out, err
            await until(lambda: "digits" not in store.snapshot, 2.0, "the delete")
            assert len(store.snapshot) == 0  # the very last flag: gone, not "an outage"
            assert not store.health.stale and store.health.missing_flags == ()
        finally:
            await source.close()

    asyncio.run(scenario())
    history = admin_for(url, prefix).audit("digits")
    assert [e.fields["action"] for e in history] == ["delete", "apply"]
    assert history[0].fields["reason"] == "retired"
    again = admin_for(url, prefix).apply(parse_flag(digits_flag()), reason="back")
    assert again.revision > int(history[0].fields["revision"])  # newer than its tombstone
    assert redis_server.client().exists(keys.tombstone("digits")) == 0


def test_revisions_keep_growing_after_flushall(fresh_redis: RedisServer, prefix: str) -> None:
    admin = admin_for(fresh_redis.url, prefix)
    before = admin.apply(parse_flag(digits_flag()), reason="v1")
    before = admin.update("digits", lambda s: s, action="touch", reason="v2")
    fresh_redis.client().flushall()
    after = admin.apply(parse_flag(digits_flag()), reason="re-applied after the loss")
    assert after.revision > before.revision


def test_writes_that_would_store_an_invalid_flag_fail_and_write_nothing(
    redis_server: RedisServer, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, keys = redis_server.url, RedisKeys(prefix)
    inf = tmp_path / "inf.yaml"
    inf.write_text(json.dumps(digits_flag()).replace('"coverage": 100', '"coverage": .inf'))
    code, _, err = flagctl(capsys, "apply", str(inf), url=url, prefix=prefix)
    assert code == 1 and "allocation.coverage: must be a finite number" in err
    assert redis_server.client().get(keys.flag("digits")) is None

    at_limit = json.dumps(digits_flag(revision=MAX_REVISION))
    redis_server.client().set(keys.flag("digits"), at_limit)
    redis_server.client().sadd(keys.index, "digits")
    code, _, err = flagctl(capsys, "ramp", "digits", "candidate", "5", url=url, prefix=prefix)
    assert code == 1 and "the highest there is; nothing was written" in err
    assert redis_server.client().get(keys.flag("digits")) == at_limit.encode()
    good = tmp_path / "good.json"
    good.write_text(json.dumps(digits_flag()))
    code, out, err = flagctl(capsys, "apply", str(good), "--force", url=url, prefix=prefix)
    assert code == 0 and "applied digits" in out, err


def test_flagctl_shows_and_repairs_a_document_that_would_crash_a_parser(
    redis_server: RedisServer, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, keys = redis_server.url, RedisKeys(prefix)
    admin_for(url, prefix).apply(parse_flag(digits_flag()), reason="setup")
    deep = (BROKEN / "deep_condition.json").read_bytes()
    redis_server.client().set(keys.flag("digits"), deep)
    redis_server.client().sadd(keys.index, "[/x]")  # a key that is rich markup, and no document

    for args in (("list",), ("show", "digits"), ("audit", "digits"), ("list", "--json")):
        code, out, err = flagctl(capsys, *args, url=url, prefix=prefix)
        assert code == 0 and "Traceback" not in out + err, (args, err)
        assert "INVALID" in out or args != ("list",), args
        assert "nested more than 100 levels deep" in out or args[0] in ("audit", "list"), args
    for args in (("explain", "digits", "u1"), ("ramp", "digits", "candidate", "5")):
        code, _, err = flagctl(capsys, *args, url=url, prefix=prefix)
        assert code == 1 and "apply --force" in err and "Traceback" not in err, args
    good = tmp_path / "good.json"
    good.write_text(json.dumps(digits_flag()))
    code, _, err = flagctl(capsys, "apply", str(good), "--force", url=url, prefix=prefix)
    assert code == 0, err
    assert admin_for(url, prefix).get("digits").spec is not None


def acl_user(server: RedisServer, prefix: str, *rules: str) -> None:
    server.client().execute_command(
        "ACL", "SETUSER", "sidecar", "on", ">s3cret", "resetkeys", f"~{prefix}*",
        "resetchannels", f"&{prefix}*", *rules,
    )  # fmt: skip


def test_refused_credentials_fail_the_start_and_are_reported_as_auth_later(
    fresh_redis: RedisServer, prefix: str
) -> None:
    admin_for(fresh_redis.url, prefix).apply(parse_flag(digits_flag()), reason="setup")
    acl_user(fresh_redis, prefix, "-@all", "+@read", "+@connection", "+subscribe")
    keys = RedisKeys(prefix)

    async def start(url: str) -> FlagStore:
        store = FlagStore()
        source = RedisFlagSource(url, store, keys=keys, start_timeout=5)
        await source.start()
        await source.close()
        return store

    wrong = f"redis://sidecar:nope@127.0.0.1:{fresh_redis.port}/0"
    with pytest.raises(StoreAuthError, match="refused the credentials") as info:
        asyncio.run(start(wrong))
    assert "nope" not in str(info.value) and "TRAFFICSPLIT_REDIS_URL" in str(info.value)
    acl_user(fresh_redis, prefix, "-@all", "+@connection")  # may log in, may not read
    with pytest.raises(StoreAuthError, match="permission denied"):
        asyncio.run(start(f"redis://sidecar:s3cret@127.0.0.1:{fresh_redis.port}/0"))

    acl_user(fresh_redis, prefix, "-@all", "+@read", "+@connection", "+subscribe")

    async def revoked_later() -> None:
        store = FlagStore()
        url = f"redis://sidecar:s3cret@127.0.0.1:{fresh_redis.port}/0"
        source = RedisFlagSource(url, store, keys=keys, reconcile_interval=0.05)
        await source.start()
        try:
            assert store.health.source_status == SourceStatus.OK
            acl_user(fresh_redis, prefix, "-@all", "+@connection", "+subscribe")
            await until(lambda: store.health.source_status == "auth", 5.0, "the auth state")
            assert "permission denied" in (store.health.stale_reason or "")
            assert "digits" in store.snapshot  # the last good flags keep serving
        finally:
            await source.close()

    asyncio.run(revoked_later())


def test_sidecar_with_a_wrong_password_exits_1_naming_the_cause(tmp_path: Path) -> None:
    server = RedisServer(
        tmp_path / "redis", extra_args=("--requirepass", "right"),
        client_options={"password": "right"},
    ).start()  # fmt: skip
    stderr = tmp_path / "sidecar.stderr"
    try:
        url = f"redis://:wrong@127.0.0.1:{server.port}/0"
        with pytest.raises(RuntimeError, match="exited with 1 before listening"):
            SidecarProcess(["--redis-url", url], stderr_path=stderr).start()
        log = wait_until(stderr.read_text, timeout=5, what="the sidecar's stderr")
        assert "cannot start:" in log and "refused the credentials" in log
        assert ":wrong@" not in log and "unreachable" not in log
    finally:
        server.stop()
