"""Redis clients from a URL: plain, AUTH/ACL user, TLS (``rediss://``) and Sentinel.

``redis://[user:password@]host:port/db``, ``rediss://...?ssl_ca_certs=/path/ca.pem`` and
``redis+sentinel://[user:password@]host1:26379,host2:26379/<master-name>[/db]`` (``rediss+sentinel``
for TLS to the master; ``?sentinel_password=`` when the sentinels need their own password).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError
from redis.sentinel import Sentinel

from flags.errors import StoreAuthError, StoreError, StoreUnavailableError

DEFAULT_URL = "redis://127.0.0.1:6379/0"
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None
    sentinel_password: str | None
    tls: bool


def parse_sentinel_url(url: str) -> SentinelTarget:
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a sentinel URL: {url!r}")
    netloc = parts.netloc.rsplit("@", 1)
    credentials, hostlist = (netloc[0], netloc[1]) if len(netloc) == 2 else ("", netloc[0])
    username, _, password = credentials.partition(":")
    hosts = []
    for item in hostlist.split(","):
        host, _, port = item.partition(":")
        hosts.append((host, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a sentinel URL needs the master name: redis+sentinel://h:26379/mymaster")
    query = parse_qs(parts.query)
    return SentinelTarget(
        hosts=tuple(hosts),
        service=path[0],
        db=int(path[1]) if len(path) > 1 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_password=query.get("sentinel_password", [None])[0],
        tls=parts.scheme.startswith("rediss"),
    )


def _common(timeout: float) -> dict[str, Any]:
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout, "decode_responses": False}


def _sentinel_master(sentinel_class: Any, url: str, timeout: float) -> Any:
    """The master behind ``url``'s sentinels, with either redis-py's sync or asyncio Sentinel."""
    t = parse_sentinel_url(url)
    sentinel = sentinel_class(
        list(t.hosts),
        sentinel_kwargs={"password": t.sentinel_password, "socket_timeout": timeout},
        **_common(timeout),
    )
    return sentinel.master_for(
        t.service, db=t.db, username=t.username, password=t.password, ssl=t.tls
    )


def sync_client(url: str, *, timeout: float = 2.0) -> redis.Redis:
    """A blocking client (for ``flagctl`` and tools)."""
    if url.startswith(SENTINEL_SCHEMES):
        return cast(redis.Redis, _sentinel_master(Sentinel, url, timeout))
    return redis.Redis.from_url(url, **_common(timeout))


def async_client(url: str, *, timeout: float = 2.0) -> aioredis.Redis:
    """An asyncio client (for the sidecar's flag source)."""
    if url.startswith(SENTINEL_SCHEMES):
        return cast(aioredis.Redis, _sentinel_master(AsyncSentinel, url, timeout))
    return aioredis.Redis.from_url(url, **_common(timeout))


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    credentials, host = parts.netloc.rsplit("@", 1)
    user = credentials.partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{host}" if user else f"***@{host}").geturl()


def as_bytes(value: bytes | str) -> bytes:
    """redis-py is typed as returning bytes or str; with decode_responses=False it is bytes."""
    return value if isinstance(value, bytes) else value.encode()


def as_text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


_AUTH_MARKERS = ("NOAUTH", "WRONGPASS", "NOPERM", "no permissions", "invalid password")


def is_auth_error(exc: BaseException) -> bool:
    """Credentials refused or a permission missing: configuration, not an outage."""
    if isinstance(exc, AuthenticationError | NoPermissionError):
        return True
    return isinstance(exc, ResponseError) and any(m in str(exc) for m in _AUTH_MARKERS)


def translate(exc: RedisError | OSError, url: str) -> StoreError:
    """One redis-py error as the ``flags`` error an operator can act on (password redacted)."""
    where = redact(url) if url else "Redis"
    if isinstance(exc, NoPermissionError) or (is_auth_error(exc) and "NOPERM" in str(exc)):
        return StoreAuthError(
            f"Redis at {where}: permission denied by Redis ACL ({exc}); give the user the "
            "permissions docs/flags.md lists (sidecars: read keys and subscribe to the channel "
            "under the prefix; flagctl: also write and run scripts)"
        )
    if is_auth_error(exc):
        return StoreAuthError(
            f"Redis at {where} refused the credentials ({exc}); check the user and password in "
            "the Redis URL (--redis-url / TRAFFICSPLIT_REDIS_URL)"
        )
    return StoreUnavailableError(f"cannot reach Redis at {where}: {exc}")
