"""The flagd targeting that assigns exactly like a flag's split (docs/flags.md, "Hashing").

flagd's ``fractional`` buckets ``(hash * total_weight) >> 32`` and walks its weights in the order
written; ours buckets ``(hash * 1_000_000) >> 32`` and walks ppm bounds with the default variant
first. The two agree on every user when flagd's weights are our ppm shares in our order, which is
what :func:`fractional_targeting` writes. What it cannot carry: coverage (our coverage hash uses a
seed flagd does not have, so users outside coverage must be handled before it), rules, and which
flagd version hashes what: ``legacy`` flags match flagd before fractional v3, ``flagd-v3`` flags
match v3 and later.
"""

from __future__ import annotations

from typing import Any

from flags.compiled import CompiledFlag, SplitTable


def bucket_by(salt: str) -> list[Any] | dict[str, Any] | None:
    """flagd's bucketBy for a salt: None means the shorthand (flag key and targeting key)."""
    if not salt:
        return None
    return {"cat": [salt, {"var": "$flagd.flagKey"}, {"var": "targetingKey"}]}


def fractional_targeting(flag: CompiledFlag, table: SplitTable | None = None) -> dict[str, Any]:
    """``{"fractional": [...]}`` for ``table`` (default: the allocation's split) of ``flag``."""
    table = table if table is not None else flag.allocation_table
    if table is None:
        raise ValueError(f"flag {flag.key!r} has no allocation split to express in flagd")
    buckets: list[Any] = []
    lower = 0
    for bound, outcome in zip(table.bounds, table.outcomes, strict=True):
        buckets.append([outcome.variant, bound - lower])
        lower = bound
    seed = bucket_by(flag.spec.salt)
    return {"fractional": buckets if seed is None else [seed, *buckets]}
