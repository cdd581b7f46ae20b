"""Reading and writing flags in Redis for ops (``flagctl``) and controllers.

Every write is one Lua script, atomic on the server: compare-and-set on the exact bytes that were
read (so even a hand edit that forgot to bump ``revision`` is detected), write the new document,
add it to the index, append an audit record and publish the change. Either all of that happens or
none of it, and two operators never overwrite each other silently: the loser gets
:class:`RevisionConflictError`.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from flags.errors import (
    FlagNotFoundError,
    FlagsError,
    RevisionConflictError,
    StoreUnavailableError,
)
from flags.mutations import diff, with_revision
from flags.redis_conn import as_bytes, as_text, redact
from flags.redis_keys import RedisKeys
from flags.schema import FlagSpec, parse_flag

# KEYS: flag document, index set, audit stream.
# ARGV: sha1 of the bytes read ("" = must not exist), new document, flag key, channel,
#       new revision, then audit field/value pairs.
_CAS_SCRIPT = """
local current = redis.call('GET', KEYS[1])
local digest = ''
if current then digest = redis.sha1hex(current) end
if digest ~= ARGV[1] then
  local revision = -1
  if current then
    local ok, doc = pcall(cjson.decode, current)
    if ok and type(doc) == 'table' and tonumber(doc['revision']) then
      revision = tonumber(doc['revision'])
    end
  end
  return {'conflict', tostring(revision)}
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '10000', '*', unpack(fields))
redis.call('PUBLISH', ARGV[4], '{"key":' .. cjson.encode(ARGV[3]) .. ',"revision":' .. ARGV[5] .. '}')
return {'ok', ARGV[5]}
"""


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class StoredFlag:
    """A flag as it is in Redis: its bytes, and the spec when they validate."""

    key: str
    raw: bytes
    spec: FlagSpec | None
    error: str | None

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.raw).hexdigest()

    @property
    def revision(self) -> int | None:
        return self.spec.revision if self.spec else _revision_of(self.raw)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    fields: dict[str, str]


def _revision_of(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw).get("revision")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


class FlagAdmin:
    """Flag CRUD over a blocking Redis client. Redis errors become StoreUnavailableError."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: RedisKeys | None = None,
        actor: str | None = None,
        url: str = "",
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._keys = keys or RedisKeys()
        self._actor = actor or default_actor()
        self._url = redact(url) if url else "redis"
        self._now = now
        self._cas = client.register_script(_CAS_SCRIPT)

    def _fail(self, exc: RedisError) -> StoreUnavailableError:
        if isinstance(exc, NoPermissionError):
            return StoreUnavailableError(f"{self._url}: permission denied by Redis ACL ({exc})")
        return StoreUnavailableError(f"cannot reach Redis at {self._url}: {exc}")

    def list_flags(self) -> list[StoredFlag]:
        try:
            keys = sorted(as_text(k) for k in self._client.smembers(self._keys.index))
            values = self._client.mget([self._keys.flag(k) for k in keys]) if keys else []
        except RedisError as exc:
            raise self._fail(exc) from exc
        return [
            self._stored(k, as_bytes(v)) for k, v in zip(keys, values, strict=True) if v is not None
        ]

    def get(self, key: str) -> StoredFlag:
        try:
            raw = self._client.get(self._keys.flag(key))
        except RedisError as exc:
            raise self._fail(exc) from exc
        if raw is None:
            raise FlagNotFoundError(key)
        return self._stored(key, as_bytes(raw))

    def get_valid(self, key: str) -> tuple[StoredFlag, FlagSpec]:
        stored = self.get(key)
        if stored.spec is None:
            raise FlagsError(
                f"flag {key!r} in Redis is invalid ({stored.error}); fix it with `flagctl apply`"
            )
        return stored, stored.spec

    @staticmethod
    def _stored(key: str, raw: bytes) -> StoredFlag:
        try:
            return StoredFlag(key, raw, parse_flag(raw, key=key), None)
        except FlagsError as exc:
            return StoredFlag(key, raw, None, str(exc))

    def apply(self, spec: FlagSpec, *, reason: str, force: bool = False) -> FlagSpec:
        """Create or replace a flag from a full document.

        A document that names a ``revision`` (other than 0) is an edit of that revision: if Redis
        has moved on, it is a conflict unless ``force``.
        """
        try:
            current: StoredFlag | None = self.get(spec.key)
        except FlagNotFoundError:
            current = None
        if (
            current is not None
            and spec.revision
            and not force
            and spec.revision != current.revision
        ):
            raise RevisionConflictError(spec.key, spec.revision, current.revision)
        return self._write(spec, current, action="apply", reason=reason)

    def update(
        self, key: str, edit: Callable[[FlagSpec], FlagSpec], *, action: str, reason: str
    ) -> FlagSpec:
        """Read, edit (a pure function from :mod:`flags.mutations`), compare-and-set."""
        stored, spec = self.get_valid(key)
        return self._write(edit(spec), stored, action=action, reason=reason)

    def _write(
        self, spec: FlagSpec, current: StoredFlag | None, *, action: str, reason: str
    ) -> FlagSpec:
        before = current.spec.to_document() if current and current.spec else None
        old_revision = current.revision if current else None
        revision = (old_revision or 0) + 1
        stamped = with_revision(spec, revision, at=self._now().isoformat(), by=self._actor)
        after = stamped.to_document()
        audit = {
            "at": stamped.updated_at or "",
            "actor": self._actor,
            "action": action,
            "reason": reason,
            "revision": str(revision),
            "previous_revision": "" if old_revision is None else str(old_revision),
            "changes": json.dumps(diff(before, after)),
            "before": "" if current is None else current.raw.decode(errors="replace"),
            "after": stamped.to_json(),
        }
        args: list[str] = [
            current.digest if current else "",
            stamped.to_json(),
            spec.key,
            self._keys.channel,
            str(revision),
        ]
        for name, value in audit.items():
            args += [name, value]
        try:
            result = self._cas(
                keys=[self._keys.flag(spec.key), self._keys.index, self._keys.audit(spec.key)],
                args=args,
            )
        except ResponseError as exc:
            if "NOPERM" in str(exc) or "no permissions" in str(exc):
                raise StoreUnavailableError(f"{self._url}: permission denied: {exc}") from exc
            raise StoreUnavailableError(f"Redis rejected the write: {exc}") from exc
        except RedisError as exc:
            raise self._fail(exc) from exc
        status = result[0].decode() if isinstance(result[0], bytes) else str(result[0])
        if status == "conflict":
            actual = int(result[1])
            raise RevisionConflictError(spec.key, old_revision, None if actual < 0 else actual)
        return stamped

    def audit(self, key: str, *, limit: int = 20) -> list[AuditEntry]:
        """Newest first."""
        try:
            rows = self._client.xrevrange(self._keys.audit(key), count=limit) or []
        except RedisError as exc:
            raise self._fail(exc) from exc
        return [
            AuditEntry(
                as_text(entry_id or b""),
                {as_text(k): as_text(v) for k, v in (fields or {}).items()},
            )
            for entry_id, fields in rows
        ]


def audit_summary(entry: AuditEntry) -> dict[str, Any]:
    """The fields ops read in a table, without the full before/after documents."""
    fields = entry.fields
    return {
        "id": entry.id,
        "at": fields.get("at", ""),
        "actor": fields.get("actor", ""),
        "action": fields.get("action", ""),
        "revision": fields.get("revision", ""),
        "reason": fields.get("reason", ""),
        "changes": json.loads(fields.get("changes", "[]") or "[]"),
    }
