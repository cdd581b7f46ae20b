"""A validated flag turned into lookup tables, so evaluation is a few comparisons.

Everything that does not depend on the user is done here, once per flag change: the split becomes
cumulative integer bounds in parts per million, conditions become predicates, allow-lists become
frozensets, and every possible :class:`Resolution` is built ahead so evaluation allocates nothing.

Split layout: the default variant's range comes first, the others follow in the order written.
Raising a candidate's share therefore only takes buckets from the variant before it, so in a
two-variant split a user who had the candidate keeps it as it ramps (tested as an invariant).

Hashing: ``CompiledFlag(spec)`` returns a :class:`FlagdV3Flag` when the spec says
``hashing: flagd-v3``. The legacy class keeps its hot path untouched (no per-request branch on the
mode); the v3 class differs only in the split hash it feeds the same tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mmh3

from flags.conditions import Predicate, compile_condition
from flags.evaluation import ErrorCode, Reason, Resolution, Subject
from flags.hashing import COVERAGE_SEED, FLAGD_V3, LEGACY, PPM, percent_to_ppm, v3_key, v3_parts
from flags.schema import FlagSpec


@dataclass(frozen=True, slots=True)
class SplitTable:
    """Cumulative upper bounds (ppm) and the resolution served below each bound."""

    bounds: tuple[int, ...]
    outcomes: tuple[Resolution, ...]

    def pick(self, ppm_bucket: int) -> Resolution:
        for bound, outcome in zip(self.bounds, self.outcomes, strict=True):
            if ppm_bucket < bound:
                return outcome
        return self.outcomes[-1]  # unreachable: the last bound is PPM


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    users: frozenset[str] | None
    predicate: Predicate | None
    fixed: Resolution | None
    split: SplitTable | None


class CompiledFlag:
    """One flag, ready for evaluation. Immutable after construction."""

    __slots__ = (
        "_alloc",
        "_coverage_ppm",
        "_hash_prefix",
        "default",
        "disabled",
        "enabled",
        "key",
        "revision",
        "rules",
        "spec",
    )

    def __new__(cls, spec: FlagSpec) -> CompiledFlag:
        # One constructor for every caller (store, CLI, bench, tests); the spec picks the hash.
        if cls is CompiledFlag and spec.hashing == FLAGD_V3:
            cls = FlagdV3Flag
        return object.__new__(cls)

    def __init__(self, spec: FlagSpec) -> None:
        self.spec = spec
        self.key = spec.key
        self.revision = spec.revision
        self.enabled = spec.enabled
        self._hash_prefix = spec.salt + spec.key
        default = spec.default_variant
        self.default = self._outcome(default, Reason.DEFAULT, exposed=False)
        self.disabled = self._outcome(default, Reason.DISABLED, exposed=False)
        self.rules = tuple(self._compile_rule(i, spec) for i in range(len(spec.rules)))
        alloc = spec.allocation
        self._alloc = None if alloc is None else self._split_table(alloc.split, Reason.SPLIT, None)
        self._coverage_ppm = PPM if alloc is None else percent_to_ppm(alloc.coverage)

    def _outcome(
        self, variant: str, reason: Reason, *, exposed: bool, rule: str | None = None
    ) -> Resolution:
        return Resolution(
            flag_key=self.key,
            variant=variant,
            target=self.spec.variants[variant],
            reason=reason,
            revision=self.revision,
            rule=rule,
            exposed=exposed,
        )

    def _split_table(
        self, split: Mapping[str, float], reason: Reason, rule: str | None
    ) -> SplitTable:
        default = self.spec.default_variant
        order = sorted(split, key=lambda name: name != default)  # stable: default first
        bounds: list[int] = []
        outcomes: list[Resolution] = []
        upper = 0
        for name in order:
            share = percent_to_ppm(split[name])
            if share <= 0:
                continue
            upper += share
            bounds.append(upper)
            outcomes.append(self._outcome(name, reason, exposed=True, rule=rule))
        bounds[-1] = PPM  # absorb rounding so every bucket maps somewhere
        return SplitTable(tuple(bounds), tuple(outcomes))

    def _compile_rule(self, index: int, spec: FlagSpec) -> CompiledRule:
        rule = spec.rules[index]
        name = rule.name or f"rule-{index}"
        fixed = None
        split = None
        if rule.serve is not None:
            # Targeted, not exposed: the rule chose this variant, no split did, so these users are
            # not part of the comparison.
            fixed = self._outcome(rule.serve, Reason.TARGETING_MATCH, exposed=False, rule=name)
        else:
            assert rule.split is not None  # schema guarantees exactly one of serve/split
            split = self._split_table(rule.split, Reason.TARGETING_MATCH, name)
        return CompiledRule(
            name=name,
            users=frozenset(rule.users) if rule.users is not None else None,
            predicate=compile_condition(rule.when) if rule.when is not None else None,
            fixed=fixed,
            split=split,
        )

    # The hot path. Keep it free of allocation and attribute chains.
    def resolve(self, subject: Subject) -> Resolution:
        if not self.enabled:
            return self.disabled
        uid = subject.id
        for rule in self.rules:
            if rule.users is not None and uid not in rule.users:
                continue
            if rule.predicate is not None and not rule.predicate(subject.attributes):
                continue
            if rule.fixed is not None:
                return rule.fixed
            assert rule.split is not None
            return rule.split.pick((mmh3.hash(self._hash_prefix + uid, 0, False) * PPM) >> 32)
        alloc = self._alloc
        if alloc is None:
            return self.default
        hashed = self._hash_prefix + uid
        coverage = self._coverage_ppm
        if coverage < PPM and (mmh3.hash(hashed, COVERAGE_SEED, False) * PPM) >> 32 >= coverage:
            return self.default
        return alloc.pick((mmh3.hash(hashed, 0, False) * PPM) >> 32)

    def error(self, code: ErrorCode, message: str) -> Resolution:
        """The default variant, flagged as an evaluation error (never raises)."""
        return Resolution(
            flag_key=self.key,
            variant=self.spec.default_variant,
            target=self.spec.variants[self.spec.default_variant],
            reason=Reason.ERROR,
            revision=self.revision,
            error_code=code,
            error_message=message,
        )

    @property
    def allocation_table(self) -> SplitTable | None:
        """The allocation's split (default variant first), or None without an allocation."""
        return self._alloc

    @property
    def hashing(self) -> str:
        return self.spec.hashing or LEGACY

    def split_bucket(self, user_id: str) -> int:
        """The user's split bucket in ppm (the hot path inlines this)."""
        return (mmh3.hash(self._hash_prefix + user_id, 0, False) * PPM) >> 32

    def explain(self, subject: Subject) -> dict[str, Any]:
        """Why ``subject`` gets what it gets: buckets, coverage and the rule checked (for ops)."""
        hashed = self._hash_prefix + subject.id
        split_bucket = self.split_bucket(subject.id)
        coverage_bucket = (mmh3.hash(hashed, COVERAGE_SEED, False) * PPM) >> 32
        resolution = self.resolve(subject)
        return {
            "flag": self.key,
            "revision": self.revision,
            "user": subject.id,
            "variant": resolution.variant,
            "reason": str(resolution.reason),
            "rule": resolution.rule,
            "exposed": resolution.exposed,
            "model": resolution.target.model if resolution.target else None,
            "version": resolution.target.version if resolution.target else None,
            "enabled": self.enabled,
            "hashing": self.hashing,
            "split_bucket_percent": split_bucket / (PPM // 100),
            "coverage_bucket_percent": coverage_bucket / (PPM // 100),
            "coverage_percent": self._coverage_ppm / (PPM // 100),
        }


class FlagdV3Flag(CompiledFlag):
    """A flag with ``hashing: flagd-v3``: the split hash is flagd's CBOR form (flags.hashing).

    The coverage hash stays the legacy string under its own seed: flagd has no coverage, so there
    is nothing to match, and keeping it means switching a flag's hashing moves only the split.
    """

    __slots__ = ("_v3_base", "_v3_head", "_v3_tail")

    def __init__(self, spec: FlagSpec) -> None:
        super().__init__(spec)
        self._v3_head, self._v3_base, self._v3_tail = v3_parts(spec.salt, spec.key)

    def split_bucket(self, user_id: str) -> int:
        key = v3_key(self._v3_head, self._v3_base, self._v3_tail, user_id)
        return (mmh3.hash(key, 0, False) * PPM) >> 32

    # The same walk as CompiledFlag.resolve with the v3 split hash. Deliberately a copy: the
    # legacy path inlines its hash (no method call per request), and legacy flags are the
    # measured hot path (bench `assignment`); a shared walk would cost them ~0.1 µs.
    def resolve(self, subject: Subject) -> Resolution:
        if not self.enabled:
            return self.disabled
        uid = subject.id
        for rule in self.rules:
            if rule.users is not None and uid not in rule.users:
                continue
            if rule.predicate is not None and not rule.predicate(subject.attributes):
                continue
            if rule.fixed is not None:
                return rule.fixed
            assert rule.split is not None
            return rule.split.pick(self.split_bucket(uid))
        alloc = self._alloc
        if alloc is None:
            return self.default
        coverage = self._coverage_ppm
        if (
            coverage < PPM
            and (mmh3.hash(self._hash_prefix + uid, COVERAGE_SEED, False) * PPM) >> 32 >= coverage
        ):
            return self.default
        return alloc.pick(self.split_bucket(uid))
