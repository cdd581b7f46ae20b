"""Errors raised by the ``flags`` package.

One tree, so callers can catch exactly what they can act on::

    FlagsError
    ├── FlagValidationError     a flag document is malformed or inconsistent (lists every issue)
    ├── FlagNotFoundError       no flag with that key
    ├── VariantError            a command named a variant the flag does not have, or cannot use
    └── StoreError              the flag store (Redis) could not do what was asked
        ├── StoreUnavailableError   unreachable, timed out
        ├── StoreAuthError          credentials refused (WRONGPASS, NOAUTH) or no permission
        │                           (NOPERM): a configuration error, fatal at a sidecar's start
        └── RevisionConflictError   someone else changed the flag since it was read

Evaluation on the request path never raises: it returns the default variant with reason ERROR.
"""

from __future__ import annotations

from collections.abc import Sequence


class FlagsError(Exception):
    """Base class of every error the ``flags`` package raises on purpose."""


class FlagValidationError(FlagsError):
    """A flag document failed validation; ``issues`` holds one "path: problem" line each."""

    def __init__(
        self, issues: Sequence[str], *, key: str | None = None, note: str | None = None
    ) -> None:
        self.issues = tuple(issues)
        self.key = key
        where = f"flag {key!r}" if key else "flag"
        context = f" ({note})" if note else ""
        super().__init__(f"invalid {where}{context}: " + "; ".join(self.issues))


class FlagNotFoundError(FlagsError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no flag named {key!r} (list them with `flagctl list`)")


class VariantError(FlagsError):
    """A command named a variant that does not exist or cannot be used that way."""


class StoreError(FlagsError):
    """The flag store could not complete an operation."""


class StoreUnavailableError(StoreError):
    """The store is unreachable (network, timeout, server error)."""


class StoreAuthError(StoreError):
    """The store refused our credentials or lacks a permission: fix the configuration."""


class RevisionConflictError(StoreError):
    def __init__(self, key: str, expected: int | None, actual: int | None) -> None:
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"flag {key!r} was changed by someone else (you read revision {expected}, "
            f"it is now {actual}); re-read it with `flagctl show {key}` and try again"
        )


class FencedError(StoreError):
    """A fenced write (a rollout controller's) was refused: another replica took the lease."""

    def __init__(self, key: str, token: int) -> None:
        self.key = key
        self.token = token
        super().__init__(
            f"write to {key!r} refused: fencing token {token} is stale (another controller "
            "replica holds the leader lease); nothing was written"
        )
