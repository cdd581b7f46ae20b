"""Immutable snapshots of every flag, and the pure ``evaluate`` over them.

Sources build a whole new :class:`Snapshot` and the store swaps the reference: a request sees
either the old state or the new one, never a mix, and needs no lock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType

from flags.compiled import CompiledFlag
from flags.evaluation import ErrorCode, Reason, Resolution, Subject


class Snapshot(Mapping[str, CompiledFlag]):
    """A read-only mapping of flag key to compiled flag."""

    __slots__ = ("_flags",)

    def __init__(self, flags: Mapping[str, CompiledFlag] | None = None) -> None:
        self._flags: Mapping[str, CompiledFlag] = MappingProxyType(dict(flags or {}))

    def __getitem__(self, key: str) -> CompiledFlag:
        return self._flags[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._flags)

    def __len__(self) -> int:
        return len(self._flags)

    def get(self, key: str, default: CompiledFlag | None = None) -> CompiledFlag | None:  # type: ignore[override]
        # Mapping.get would go through two Python-level calls; this is on the request path.
        return self._flags.get(key, default)

    def revisions(self) -> dict[str, int]:
        return {key: flag.revision for key, flag in self._flags.items()}

    def replace(self, changes: Mapping[str, CompiledFlag | None]) -> Snapshot:
        """A new snapshot with ``changes`` applied (None removes a flag)."""
        merged = dict(self._flags)
        for key, flag in changes.items():
            if flag is None:
                merged.pop(key, None)
            else:
                merged[key] = flag
        return Snapshot(merged)


EMPTY_SNAPSHOT = Snapshot()


def evaluate(snapshot: Mapping[str, CompiledFlag], flag_key: str, subject: Subject) -> Resolution:
    """Assign ``subject`` a variant of ``flag_key``. Pure, and never raises.

    Unknown flag: reason ERROR with FLAG_NOT_FOUND and no variant (the caller decides what to
    serve). Empty user id: the default variant with TARGETING_KEY_MISSING.
    """
    flag = snapshot.get(flag_key)
    if flag is None:
        return Resolution(
            flag_key=flag_key,
            variant=None,
            target=None,
            reason=Reason.ERROR,
            error_code=ErrorCode.FLAG_NOT_FOUND,
            error_message=f"no flag named {flag_key!r}",
        )
    if not subject.id:
        return flag.error(ErrorCode.TARGETING_KEY_MISSING, "the subject has no user id")
    try:
        return flag.resolve(subject)
    except Exception as exc:  # a predicate on exotic input must not fail the request
        return flag.error(ErrorCode.GENERAL, f"evaluation failed: {exc}")
