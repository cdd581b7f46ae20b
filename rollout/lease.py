"""The leader lease: exactly one controller replica acts; a standby takes over within the lease.

``<prefix>controller:leader`` holds ``<replica id>:<token>`` with a TTL (SET NX PX); the leader
renews it every tick. Each acquisition takes a new fencing token from ``<prefix>controller:fence``
(INCR) and every write of the controller carries it: the flag and state scripts refuse a write
unless the fence key still holds that token. So a leader that stalled past its lease (GC pause,
network partition) and wakes up believing it leads cannot overwrite the new leader's decisions:
the lease makes one replica act, the fence makes a stale one harmless.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import redis
from redis.exceptions import RedisError

from flags.admin import Fence
from flags.redis_conn import as_text
from flags.redis_keys import RedisKeys

# KEYS: lease, fence. ARGV: replica id, ttl ms. Returns the new token, or nil if held.
_ACQUIRE = """
if redis.call('SET', KEYS[1], 'claiming', 'NX', 'PX', ARGV[2]) then
  local token = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
  return token
end
return false
"""

# KEYS: lease. ARGV: value held, ttl ms. 1 if still ours (renewed), 0 otherwise.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class LeaseKeys:
    lease: str
    fence: str

    @classmethod
    def of(cls, keys: RedisKeys) -> LeaseKeys:
        return cls(f"{keys.prefix}controller:leader", f"{keys.prefix}controller:fence")


class Lease:
    """One replica's view of the lease. Not thread-safe: the controller loop owns it."""

    def __init__(self, client: redis.Redis, *, keys: RedisKeys, replica: str, ttl_s: float) -> None:
        self._client = client
        self.keys = LeaseKeys.of(keys)
        self.replica = replica
        self._ttl_ms = max(int(ttl_s * 1000), 1)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self.fence: Fence | None = None
        self.error: str | None = None  # why the last attempt could not reach Redis

    @property
    def held(self) -> bool:
        return self.fence is not None

    def _value(self) -> str:
        assert self.fence is not None
        return f"{self.replica}:{self.fence.token}"

    def ensure(self) -> Fence | None:
        """Renew the lease if held, else try to take it. The fence to write with, or None.

        A Redis error counts as not leading: better a tick without a leader than two leaders.
        """
        try:
            if self.fence is not None:
                if self._renew(keys=[self.keys.lease], args=[self._value(), self._ttl_ms]):
                    return self.fence
                self.fence = None
            token = self._acquire(
                keys=[self.keys.lease, self.keys.fence], args=[self.replica, self._ttl_ms]
            )
        except RedisError as exc:
            self.fence = None
            self.error = f"{type(exc).__name__}: {exc}"
            return None
        self.error = None
        if token is None:
            return None
        self.fence = Fence(self.keys.fence, int(token))
        return self.fence

    def release(self) -> None:
        """Give the lease up (clean shutdown) so a standby takes over at once."""
        if self.fence is None:
            return
        with contextlib.suppress(RedisError):  # it expires on its own
            self._release(keys=[self.keys.lease], args=[self._value()])
        self.fence = None

    def holder(self) -> str | None:
        try:
            value = self._client.get(self.keys.lease)
        except RedisError:
            return None
        return None if value is None else as_text(value)
