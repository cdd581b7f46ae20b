"""Where a request goes: the pure decision between the flag snapshot and a backend call.

Given the snapshot, the model the app asked for, an optional pinned version and the subject, a
:class:`RoutePlan` says which model version to call first, which to fall back to if that fails,
and what to report. No I/O: the router executes the plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from flags import ErrorCode, Reason, Subject, evaluate
from flags.compiled import CompiledFlag
from flags.schema import Scalar, Target
from sidecar import wire
from sidecar.errors import PinningForbidden

NO_FLAG = "NO_FLAG"  # the model has no flag: served as requested
ANONYMOUS = "ANONYMOUS"  # no user id, anonymous traffic allowed: the default variant
_EMPTY: Mapping[str, Scalar] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Hop:
    """One backend call: model name, version ("" = the backend's default) and parameters."""

    model: str
    version: str
    parameters: Mapping[str, Scalar] = field(default_factory=lambda: _EMPTY)
    # Bytes that retarget a serialized request here (sidecar.wire), precomputed for flag targets.
    wire_suffix: bytes = field(default=b"", compare=False, repr=False)

    @property
    def key(self) -> str:
        """Identifies the model version for the circuit breaker."""
        return f"{self.model}:{self.version}"

    def suffix_for(self, caller_keys: frozenset[str]) -> bytes:
        if self.wire_suffix and not caller_keys:
            return self.wire_suffix
        return wire.retarget(self.model, self.version, self.parameters, caller_keys)

    @classmethod
    def of(cls, target: Target) -> Hop:
        # One Hop per flag target, built once per flag revision: the request path only looks it up.
        cached = _HOPS.get(id(target))
        if cached is not None and cached[0] is target:
            return cached[1]
        if len(_HOPS) > _MAX_CACHED_HOPS:
            _HOPS.clear()
        suffix = wire.retarget(target.model, target.version, target.parameters, frozenset())
        hop = cls(target.model, target.version, target.parameters, suffix)
        _HOPS[id(target)] = (target, hop)  # holding the target keeps its id from being reused
        return hop


_MAX_CACHED_HOPS = 4096
_HOPS: dict[int, tuple[Target, Hop]] = {}


@dataclass(frozen=True, slots=True)
class RoutePlan:
    flag: str  # "" when the model has no flag
    variant: str  # the cohort; "" when there is no flag
    reason: str
    primary: Hop
    fallback: Hop | None  # the default variant, when the cohort's version may fail over to it
    revision: int = 0
    rule: str | None = None
    exposed: bool = False


def plan_route(
    snapshot: Mapping[str, CompiledFlag], model: str, pinned_version: str, subject: Subject
) -> RoutePlan:
    """Decide the route for one request. Raises PinningForbidden; never raises otherwise."""
    resolution = evaluate(snapshot, model, subject)
    if resolution.error_code == ErrorCode.FLAG_NOT_FOUND or resolution.target is None:
        # No experiment on this model: the sidecar is a transparent proxy.
        return RoutePlan(
            flag="", variant="", reason=NO_FLAG, primary=Hop(model, pinned_version), fallback=None
        )
    flag = snapshot[model]
    if pinned_version:
        return _pinned(flag, model, pinned_version, resolution.target)
    variant = resolution.variant or flag.spec.default_variant
    reason = str(resolution.reason)
    if resolution.error_code == ErrorCode.TARGETING_KEY_MISSING:
        reason = ANONYMOUS
    default = flag.spec.variants[flag.spec.default_variant]
    primary = Hop.of(resolution.target)
    can_fall_back = variant != flag.spec.default_variant and default != resolution.target
    return RoutePlan(
        flag=flag.key,
        variant=variant,
        reason=reason,
        primary=primary,
        fallback=Hop.of(default) if can_fall_back else None,
        revision=resolution.revision,
        rule=resolution.rule,
        exposed=resolution.exposed,
    )


def _pinned(flag: CompiledFlag, model: str, version: str, assigned: Target) -> RoutePlan:
    if not flag.spec.allow_version_pinning and version != assigned.version:
        raise PinningForbidden(
            f"flag {flag.key!r} does not allow pinning a model version; send no version and "
            f"the flag decides (this user would get version {assigned.version})"
        )
    # Report the variant that serves this version, if any; a pin is never an exposure.
    variant = next((n for n, t in flag.spec.variants.items() if t.version == version), "pinned")
    target = flag.spec.variants.get(variant)
    hop = Hop.of(target) if target is not None else Hop(model, version)
    return RoutePlan(
        flag=flag.key,
        variant=variant,
        reason=str(Reason.PINNED),
        primary=hop,
        fallback=None,
        revision=flag.revision,
    )
