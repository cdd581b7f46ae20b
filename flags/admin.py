"""Reading and writing flags in Redis for ops (``flagctl``) and controllers.

Every write is one Lua script, atomic on the server: compare-and-set on the exact bytes that were
read (so even a hand edit that forgot to bump ``revision`` is detected) and on the revision epoch
(:mod:`flags.revisions`), write the new document (or, for a delete, remove it and leave a
tombstone), update the index, append an audit record and publish the change. Either all of that
happens or none of it, and two operators never overwrite each other silently: the loser gets
:class:`RevisionConflictError`. Before the script runs, the exact bytes it will store are
validated by :func:`flags.schema.parse_flag`, the validator every sidecar uses: a write reports
success only if the stored document is one the sidecars accept.
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
from redis.exceptions import RedisError

from flags.decode import decode_json
from flags.errors import (
    FencedError,
    FlagNotFoundError,
    FlagsError,
    FlagValidationError,
    RevisionConflictError,
    StoreError,
    StoreUnavailableError,
)
from flags.mutations import diff, settle_hashing, with_revision
from flags.redis_conn import as_bytes, as_text, redact, translate
from flags.redis_keys import RedisKeys
from flags.revisions import next_revision
from flags.schema import MAX_REVISION, FlagSpec, parse_flag

# The epoch (Unix ms): created from the server's clock when missing (Redis lost its data).
_EPOCH_SCRIPT = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  local now = redis.call('TIME')
  epoch = string.format('%.0f', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
  redis.call('SET', KEYS[1], epoch)
end
return epoch
"""

# KEYS: flag document, index set, audit stream, tombstone, epoch, [fence key].
# ARGV: sha1 of the bytes read ("" = must not exist), new document ("" = delete), flag key,
#       channel, change message, epoch the revision was computed in, tombstone (for a delete),
#       fencing token ("" = unfenced: flagctl), then audit field/value pairs.
# A fenced write (a rollout controller replica) is refused unless the fence key still holds its
# token: a stale leader that lost its lease cannot write, atomically with the write itself.
_CAS_SCRIPT = """
if ARGV[8] ~= '' and redis.call('GET', KEYS[6]) ~= ARGV[8] then return {'fenced'} end
local current = redis.call('GET', KEYS[1])
local digest = ''
if current then digest = redis.sha1hex(current) end
if digest ~= ARGV[1] then return {'conflict'} end
if redis.call('GET', KEYS[5]) ~= ARGV[6] then return {'epoch'} end
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[3])
  redis.call('DEL', KEYS[4])
else
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[3])
  redis.call('SET', KEYS[4], ARGV[7])
end
local fields = {}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '10000', '*', unpack(fields))
redis.call('PUBLISH', ARGV[4], ARGV[5])
return {'ok'}
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
    present: bool = True  # False: in the index, but its document is gone (data loss, raw DEL)

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.raw).hexdigest() if self.present else ""

    @property
    def revision(self) -> int | None:
        return self.spec.revision if self.spec else _revision_of(self.raw)


@dataclass(frozen=True, slots=True)
class Fence:
    """A rollout controller's fencing token: writes succeed only while ``key`` holds ``token``."""

    key: str
    token: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    fields: dict[str, str]


def _missing(key: str) -> StoredFlag:
    return StoredFlag(
        key,
        b"",
        None,
        "in the index but its document is gone (data loss or a raw DEL): sidecars keep serving "
        "their last good version; `flagctl apply` it again or `flagctl delete` it",
        present=False,
    )


def _revision_of(raw: bytes | None) -> int | None:
    """The revision of a document that may be invalid (None if it has no usable one)."""
    if raw is None:
        return None
    try:
        data = decode_json(raw)
    except FlagValidationError:
        return None
    value = data.get("revision") if isinstance(data, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_REVISION:
        return value
    return None


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
        fence: Fence | None = None,
    ) -> None:
        self._fence = fence
        self._client = client
        self._keys = keys or RedisKeys()
        self._actor = actor or default_actor()
        self._url = redact(url) if url else "redis"
        self._raw_url = url
        self._now = now
        self._cas = client.register_script(_CAS_SCRIPT)
        self._epoch_script = client.register_script(_EPOCH_SCRIPT)

    @property
    def client(self) -> redis.Redis:
        """The connection, for capabilities that keep their own keys beside the flag."""
        return self._client

    @property
    def actor(self) -> str:
        return self._actor

    def _fail(self, exc: RedisError) -> StoreError:
        return translate(exc, self._raw_url)

    def list_flags(self) -> list[StoredFlag]:
        try:
            keys = sorted(as_text(k) for k in self._client.smembers(self._keys.index))
            values = self._client.mget([self._keys.flag(k) for k in keys]) if keys else []
        except RedisError as exc:
            raise self._fail(exc) from exc
        return [
            self._stored(k, as_bytes(v)) if v is not None else _missing(k)
            for k, v in zip(keys, values, strict=True)
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
                f"flag {key!r} in Redis is invalid ({stored.error}); nothing was changed: "
                f"replace it with `flagctl apply --force FILE`"
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
        stored = current.spec if current is not None else None
        spec = settle_hashing(spec, stored, exists=current is not None)
        return self._write(spec, current, action="apply", reason=reason, force=force)

    def update(
        self, key: str, edit: Callable[[FlagSpec], FlagSpec], *, action: str, reason: str
    ) -> FlagSpec:
        """Read, edit (a pure function from :mod:`flags.mutations`), compare-and-set."""
        stored, spec = self.get_valid(key)
        return self._write(edit(spec), stored, action=action, reason=reason)

    def delete(self, key: str, *, reason: str) -> int:
        """Remove a flag on purpose: sidecars drop it (a tombstone tells them it is no data loss).

        Works on an invalid document, and on a flag whose document is already gone (after data
        loss sidecars keep serving it until it is re-applied or deleted). Returns the revision
        recorded in the tombstone.
        """
        try:
            current: StoredFlag | None = self.get(key)
        except FlagNotFoundError:
            current = None
        epoch = self._epoch()
        revision = next_revision(current.revision if current else None, epoch)
        if revision > MAX_REVISION:
            revision = next_revision(None, epoch)
        at = self._now().isoformat()
        tombstone = json.dumps(
            {
                "key": key,
                "revision": revision,
                "deleted_at": at,
                "deleted_by": self._actor,
                "reason": reason,
            }
        )
        audit = self._audit_fields(
            action="delete",
            reason=reason,
            at=at,
            revision=revision,
            current=current,
            changes=["deleted"],
            after="",
        )
        message = json.dumps({"key": key, "revision": revision, "deleted": True})
        self._run_cas(key, current, "", message, epoch, tombstone, audit)
        return revision

    def _epoch(self) -> int:
        try:
            return int(self._epoch_script(keys=[self._keys.epoch]))
        except RedisError as exc:
            raise self._fail(exc) from exc

    def _tombstone_revision(self, key: str) -> int | None:
        try:
            raw = self._client.get(self._keys.tombstone(key))
        except RedisError as exc:
            raise self._fail(exc) from exc
        return None if raw is None else _revision_of(as_bytes(raw))

    def _write(
        self,
        spec: FlagSpec,
        current: StoredFlag | None,
        *,
        action: str,
        reason: str,
        force: bool = False,
    ) -> FlagSpec:
        key = spec.key
        old_revision = current.revision if current else self._tombstone_revision(key)
        epoch = self._epoch()
        revision = next_revision(old_revision, epoch)
        if revision > MAX_REVISION:
            if not force:
                raise FlagsError(
                    f"flag {key!r} is at revision {old_revision}, the highest there is; nothing "
                    "was written: `flagctl apply --force FILE` restarts its numbering"
                )
            revision = next_revision(None, epoch)
        at = self._now().isoformat()
        try:
            stamped = with_revision(spec, revision, at=at, by=self._actor)
            document = stamped.to_json()
            parse_flag(document, key=key)  # the exact bytes stored, through the sidecars' check
        except FlagValidationError as exc:
            raise FlagValidationError(
                exc.issues, key=key, note=f"{action} would store an invalid flag; nothing written"
            ) from exc
        before = current.spec.to_document() if current and current.spec else None
        audit = self._audit_fields(
            action=action,
            reason=reason,
            at=at,
            revision=revision,
            current=current,
            changes=diff(before, stamped.to_document()),
            after=document,
        )
        message = json.dumps({"key": key, "revision": revision})
        self._run_cas(key, current, document, message, epoch, "", audit)
        return stamped

    def _audit_fields(
        self,
        *,
        action: str,
        reason: str,
        at: str,
        revision: int,
        current: StoredFlag | None,
        changes: list[str],
        after: str,
    ) -> dict[str, str]:
        old = current.revision if current else None
        return {
            "at": at,
            "actor": self._actor,
            "action": action,
            "reason": reason,
            "revision": str(revision),
            "previous_revision": "" if old is None else str(old),
            "changes": json.dumps(changes),
            "before": "" if current is None else current.raw.decode(errors="replace"),
            "after": after,
        }

    def _run_cas(
        self,
        key: str,
        current: StoredFlag | None,
        document: str,
        message: str,
        epoch: int,
        tombstone: str,
        audit: dict[str, str],
    ) -> None:
        args: list[str] = [
            current.digest if current else "",
            document,
            key,
            self._keys.channel,
            message,
            str(epoch),
            tombstone,
            "" if self._fence is None else str(self._fence.token),
        ]
        for name, value in audit.items():
            args += [name, value]
        keys = [
            self._keys.flag(key),
            self._keys.index,
            self._keys.audit(key),
            self._keys.tombstone(key),
            self._keys.epoch,
        ]
        if self._fence is not None:
            keys.append(self._fence.key)
        try:
            result = self._cas(keys=keys, args=args)
        except RedisError as exc:
            raise self._fail(exc) from exc
        status = as_text(result[0])
        if status == "fenced" and self._fence is not None:
            raise FencedError(key, self._fence.token)
        if status == "conflict":
            raise RevisionConflictError(
                key, current.revision if current else None, self._current_revision(key)
            )
        if status == "epoch":
            raise StoreUnavailableError(
                f"Redis at {self._url} lost its data while {key!r} was being written (the "
                "revision epoch changed); nothing was written: run the command again"
            )

    def _current_revision(self, key: str) -> int | None:
        try:
            return self.get(key).revision
        except FlagsError:
            return None

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


def _changes(text: str) -> list[str]:
    """The audit entry's change list; entries written by hand may hold anything."""
    try:
        value = decode_json(text or "[]")
    except FlagValidationError:
        return [f"(unreadable: {text[:80]!r})"]
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


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
        "changes": _changes(fields.get("changes", "")),
    }
