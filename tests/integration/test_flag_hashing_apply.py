"""Which split hash a flag gets when it is written: new flags the current flagd spec, none moves."""

from __future__ import annotations

import json
from typing import Any

import pytest
from servers import RedisServer
from support import digits_flag

from flags import CompiledFlag, parse_flag
from flags.admin import FlagAdmin
from flags.compiled import FlagdV3Flag
from flags.mutations import ramp
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys

pytestmark = pytest.mark.redis


def admin_for(server: RedisServer, prefix: str) -> FlagAdmin:
    return FlagAdmin(sync_client(server.url), keys=RedisKeys(prefix), actor="t", url=server.url)


def stored(server: RedisServer, prefix: str, key: str = "digits") -> dict[str, Any]:
    raw = sync_client(server.url).get(RedisKeys(prefix).flag(key))
    assert raw is not None
    return json.loads(raw)  # type: ignore[no-any-return]


def test_apply_of_a_new_flag_writes_the_current_spec(
    redis_server: RedisServer, prefix: str
) -> None:
    admin = admin_for(redis_server, prefix)
    admin.apply(parse_flag(digits_flag()), reason="create")
    assert stored(redis_server, prefix)["hashing"] == "flagd-v3"
    assert isinstance(CompiledFlag(parse_flag(stored(redis_server, prefix))), FlagdV3Flag)
    # Re-applying the same file (no field) keeps it: applying a file never moves users.
    admin.apply(parse_flag(digits_flag()), reason="re-apply")
    assert stored(redis_server, prefix)["hashing"] == "flagd-v3"
    admin.update("digits", lambda s: ramp(s, "candidate", 30), action="ramp", reason="ramp")
    assert stored(redis_server, prefix)["hashing"] == "flagd-v3"


def test_a_flag_stored_without_the_field_stays_legacy(
    redis_server: RedisServer, prefix: str
) -> None:
    # Written by hand (or by an older flagctl): no field, so legacy hashing, through every edit.
    client = sync_client(redis_server.url)
    keys = RedisKeys(prefix)
    client.set(keys.flag("digits"), json.dumps(digits_flag(revision=1)))
    client.sadd(keys.index, "digits")
    admin = admin_for(redis_server, prefix)
    admin.apply(parse_flag(digits_flag()), reason="edit by file")
    assert "hashing" not in stored(redis_server, prefix)
    admin.update("digits", lambda s: ramp(s, "candidate", 30), action="ramp", reason="ramp")
    assert "hashing" not in stored(redis_server, prefix)
    assert type(CompiledFlag(parse_flag(stored(redis_server, prefix)))) is CompiledFlag


def test_an_explicit_field_always_wins(redis_server: RedisServer, prefix: str) -> None:
    admin = admin_for(redis_server, prefix)
    admin.apply(parse_flag(digits_flag(hashing="legacy")), reason="create, legacy on purpose")
    assert stored(redis_server, prefix)["hashing"] == "legacy"
    admin.apply(parse_flag(digits_flag(hashing="flagd-v3")), reason="switch (moves users)")
    assert stored(redis_server, prefix)["hashing"] == "flagd-v3"


def test_an_unknown_mode_is_rejected_with_what_to_write() -> None:
    from flags import FlagValidationError

    with pytest.raises(FlagValidationError) as info:
        parse_flag(digits_flag(hashing="murmur"))
    assert "hashing" in str(info.value) and "flagd-v3" in str(info.value)
