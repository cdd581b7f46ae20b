"""Rollout state in Redis: compare-and-set, fenced, audited into the flag's audit stream.

``<prefix>rollout:<flag>`` holds the :class:`rollout.state.RolloutState` JSON. A write is one Lua
script (like :mod:`flags.admin`'s): it checks the fencing token (controller replicas), compares
the exact bytes read, sets the new document and appends an audit record with the evidence to
``<prefix>audit:<flag>``, so one stream tells the whole story of a flag, flag writes and rollout
decisions interleaved in order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from redis.exceptions import RedisError

from flags.admin import Fence, default_actor
from flags.errors import FencedError, StoreError
from flags.redis_conn import as_bytes, translate
from flags.redis_keys import RedisKeys
from rollout.state import RolloutState, RolloutStateError, parse_state

# KEYS: state, audit stream, [fence]. ARGV: sha1 read ("" = must not exist), new document,
# fencing token ("" = unfenced), then audit field/value pairs (none: a verdict-only update,
# written every tick, is not audited; every decision is).
_WRITE_SCRIPT = """
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[3] then return 'fenced' end
local current = redis.call('GET', KEYS[1])
local digest = ''
if current then digest = redis.sha1hex(current) end
if digest ~= ARGV[1] then return 'conflict' end
redis.call('SET', KEYS[1], ARGV[2])
if #ARGV >= 4 then
  local fields = {}
  for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', unpack(fields))
end
return 'ok'
"""


def state_key(keys: RedisKeys, flag: str) -> str:
    return f"{keys.prefix}rollout:{flag}"


class StateConflictError(StoreError):
    def __init__(self, flag: str) -> None:
        super().__init__(
            f"rollout state of {flag!r} changed since it was read (another operator or the "
            "controller); nothing was written: run the command again"
        )


@dataclass(frozen=True, slots=True)
class StoredState:
    raw: bytes
    state: RolloutState

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.raw).hexdigest()


class RolloutStore:
    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: RedisKeys | None = None,
        actor: str | None = None,
        fence: Fence | None = None,
        url: str = "",
    ) -> None:
        self._client = client
        self._keys = keys or RedisKeys()
        self.actor = actor or default_actor()
        self._fence = fence
        self._url = url
        self._write = client.register_script(_WRITE_SCRIPT)

    def get(self, flag: str) -> StoredState | None:
        """The stored state (None if the flag never had a rollout); invalid → RolloutStateError."""
        try:
            raw = self._client.get(state_key(self._keys, flag))
        except RedisError as exc:
            raise translate(exc, self._url) from exc
        if raw is None:
            return None
        data = as_bytes(raw)
        return StoredState(data, parse_state(data, flag=flag))

    def raw(self, flag: str) -> bytes | None:
        try:
            value = self._client.get(state_key(self._keys, flag))
        except RedisError as exc:
            raise translate(exc, self._url) from exc
        return None if value is None else as_bytes(value)

    def get_many(self, flags: list[str]) -> dict[str, StoredState | RolloutStateError]:
        """States of ``flags`` that have one, in one round trip; invalid ones as their error."""
        if not flags:
            return {}
        try:
            values = self._client.mget([state_key(self._keys, f) for f in flags])
        except RedisError as exc:
            raise translate(exc, self._url) from exc
        found: dict[str, StoredState | RolloutStateError] = {}
        for flag, raw in zip(flags, values, strict=True):
            if raw is None:
                continue
            data = as_bytes(raw)
            try:
                found[flag] = StoredState(data, parse_state(data, flag=flag))
            except RolloutStateError as exc:
                found[flag] = exc
        return found

    def write(
        self,
        new: RolloutState,
        current: StoredState | bytes | None,
        *,
        action: str,
        reason: str,
        evidence: Mapping[str, object] | None = None,
        at: datetime | None = None,
        audited: bool = True,
    ) -> RolloutState:
        """Compare-and-set ``new`` over ``current`` (None: must not exist; bytes: raw read)."""
        flag = new.flag
        stamped = new.with_changes(updated_by=self.actor)
        document = stamped.to_json()
        parse_state(document, flag=flag)  # what we store is what every reader accepts
        if isinstance(current, StoredState):
            digest, before = current.digest, current.raw.decode(errors="replace")
        elif isinstance(current, bytes):
            digest, before = hashlib.sha1(current).hexdigest(), current.decode(errors="replace")
        else:
            digest, before = "", ""
        when = at or datetime.now(UTC)
        audit = {
            "at": when.isoformat(),
            "actor": self.actor,
            "action": action,
            "reason": reason,
            "revision": "",
            "previous_revision": "",
            "changes": json.dumps(_changes(before, stamped)),
            "before": before,
            "after": document,
            "evidence": json.dumps(dict(evidence or {}), sort_keys=True),
        }
        args: list[str] = [digest, document, "" if self._fence is None else str(self._fence.token)]
        if audited:
            for name, value in audit.items():
                args += [name, value]
        keys = [state_key(self._keys, flag), self._keys.audit(flag)]
        if self._fence is not None:
            keys.append(self._fence.key)
        try:
            status = self._write(keys=keys, args=args)
        except RedisError as exc:
            raise translate(exc, self._url) from exc
        status = status.decode() if isinstance(status, bytes) else str(status)
        if status == "fenced" and self._fence is not None:
            raise FencedError(state_key(self._keys, flag), self._fence.token)
        if status == "conflict":
            raise StateConflictError(flag)
        return stamped


def _changes(before: str, after: RolloutState) -> list[str]:
    if not before:
        return [f"rollout: created ({after.phase}, steps {after.steps})"]
    try:
        old = RolloutState.model_validate_json(before)
    except ValueError:
        return [f"rollout: replaced an invalid state with {after.phase}"]
    lines = []
    if old.phase != after.phase:
        lines.append(f"rollout.phase: {old.phase} -> {after.phase}")
    if old.step != after.step:
        lines.append(f"rollout.step: {old.step + 1} -> {after.step + 1} ({after.percent:g} %)")
    return lines or ["rollout: verdict recorded"]
