"""Where golden-gate results live: one JSON string per flag at ``<prefix>golden:<flag>``, beside
the flag's own keys, overwritten by each run (the document is in docs/rollouts.md)."""

from __future__ import annotations

import json
from typing import Any

import redis
from redis.exceptions import RedisError

from flags.errors import FlagsError
from flags.redis_keys import RedisKeys
from rollout.golden import GoldenResult


def golden_key(keys: RedisKeys, flag: str) -> str:
    return f"{keys.prefix}golden:{flag}"


def store_result(client: redis.Redis, keys: RedisKeys, result: GoldenResult) -> str:
    """Write the result; returns the key. Redis errors become a FlagsError that says so."""
    key = golden_key(keys, result.flag)
    try:
        client.set(key, json.dumps(result.to_json(), sort_keys=True))
    except RedisError as exc:
        raise FlagsError(f"could not store the golden result at {key}: {exc}") from exc
    return key


def load_result(client: redis.Redis, keys: RedisKeys, flag: str) -> dict[str, Any] | None:
    """The last stored result for ``flag`` (None if none, or if what is there is not JSON)."""
    try:
        raw = client.get(golden_key(keys, flag))
    except RedisError as exc:
        raise FlagsError(f"could not read {golden_key(keys, flag)}: {exc}") from exc
    if raw is None:
        return None
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None
