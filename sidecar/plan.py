"""Where a request goes: the pure decision between the flag snapshot and a backend call.

Given the snapshot, the model the app asked for, an optional pinned version and the subject, a
:class:`RoutePlan` says which model version to call first, which to fall back to if that fails,
and how the request relates to the experiment (its :class:`Membership`). No I/O: the router
executes the plan.

Fail safe: a model without a flag is served only by a version an operator chose statically
(``--stable model=version``), or, if the operator opted in (``--unflagged passthrough``), as the
caller asked. Otherwise it is refused, because forwarding without a version lets the backend pick
its newest version, which is typically the candidate under test.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from flags import ErrorCode, Reason, Subject, evaluate
from flags.compiled import CompiledFlag
from flags.schema import Scalar, Target
from sidecar import wire
from sidecar.errors import NoFlag, PinningForbidden

NO_FLAG = "NO_FLAG"  # the model has no flag; unflagged passthrough: served as requested
STABLE = "STABLE"  # the model has no flag; served by the operator's --stable version
ANONYMOUS = "ANONYMOUS"  # no user id, anonymous traffic allowed: the default variant
_EMPTY: Mapping[str, Scalar] = MappingProxyType({})


class Membership(enum.StrEnum):
    """How a request relates to the experiment: the label every series and span carries."""

    EXPOSED = "exposed"  # a split (the allocation's or a rule's) chose the variant: compared
    TARGETED = "targeted"  # an allow-list or `serve` rule chose it: not in the comparison
    NOT_IN_EXPERIMENT = "not_in_experiment"  # outside coverage, flag off, anonymous, error
    PINNED = "pinned"  # the caller named the version (golden sets, debugging)
    UNFLAGGED = "unflagged"  # the model has no flag (stable pin or passthrough)


@dataclass(frozen=True, slots=True)
class Hop:
    """One backend call: model name, version ("" = the backend's default) and parameters."""

    model: str
    version: str
    parameters: Mapping[str, Scalar] = field(default_factory=lambda: _EMPTY)
    # Bytes that retarget a serialized request here (sidecar.wire), precomputed for flag targets.
    wire_suffix: bytes = field(default=b"", compare=False, repr=False)
    backend: str = ""  # a named backend (--backend NAME=HOST:PORT); "" is the default backend
    key: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        # The breaker's and readiness's key, computed once: read on every request.
        object.__setattr__(self, "key", target_key(self.backend, self.model, self.version))

    def suffix_for(self, caller_keys: frozenset[str]) -> bytes:
        """The bytes that retarget a serialized request to this hop; parameters the caller set
        itself are kept (precomputed when the caller set none, which is the common case)."""
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
        hop = cls(target.model, target.version, target.parameters, suffix, target.backend or "")
        _HOPS[id(target)] = (target, hop)  # holding the target keeps its id from being reused
        return hop


def target_key(backend: str, model: str, version: str) -> str:
    """``model:version`` on the default backend, ``backend/model:version`` on a named one."""
    return f"{backend}/{model}:{version}" if backend else f"{model}:{version}"


_MAX_CACHED_HOPS = 4096
_HOPS: dict[int, tuple[Target, Hop]] = {}


@dataclass(frozen=True, slots=True)
class UnflaggedPolicy:
    """What serves a model that has no flag: a static stable version, or (opt-in) passthrough."""

    stable: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    passthrough: bool = False


class RoutePlan(NamedTuple):  # built per request: a tuple is the cheapest immutable value
    flag: str  # "" when the model has no flag
    variant: str  # the cohort; "" when there is no flag
    reason: str
    primary: Hop
    fallback: Hop | None  # the default variant, when the cohort's version may fail over to it
    revision: int = 0
    rule: str | None = None
    membership: Membership = Membership.NOT_IN_EXPERIMENT

    @property
    def exposed(self) -> bool:
        return self.membership is Membership.EXPOSED


def plan_route(
    snapshot: Mapping[str, CompiledFlag],
    model: str,
    pinned_version: str,
    subject: Subject,
    unflagged: UnflaggedPolicy = UnflaggedPolicy(),  # frozen: sharing the default is safe
) -> RoutePlan:
    """Decide the route for one request. Raises PinningForbidden or NoFlag; never otherwise."""
    resolution = evaluate(snapshot, model, subject)
    if resolution.error_code == ErrorCode.FLAG_NOT_FOUND or resolution.target is None:
        return _unflagged(model, pinned_version, unflagged)
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
    if resolution.exposed:
        membership = Membership.EXPOSED
    elif resolution.reason is Reason.TARGETING_MATCH:
        membership = Membership.TARGETED
    else:
        membership = Membership.NOT_IN_EXPERIMENT
    return RoutePlan(
        flag=flag.key,
        variant=variant,
        reason=reason,
        primary=primary,
        fallback=Hop.of(default) if can_fall_back else None,
        revision=resolution.revision,
        rule=resolution.rule,
        membership=membership,
    )


def _unflagged(model: str, pinned_version: str, policy: UnflaggedPolicy) -> RoutePlan:
    if pinned_version:  # the caller chose the version explicitly
        return RoutePlan("", "", str(Reason.PINNED), Hop(model, pinned_version), None,
                         membership=Membership.PINNED)  # fmt: skip
    stable = policy.stable.get(model)
    if stable is not None:
        return RoutePlan("", "", STABLE, Hop(model, stable), None, membership=Membership.UNFLAGGED)
    if policy.passthrough:
        return RoutePlan("", "", NO_FLAG, Hop(model, ""), None, membership=Membership.UNFLAGGED)
    raise NoFlag(
        f"model {model!r} has no flag, so no version was chosen for it and the sidecar will not "
        f"let the backend pick one (it would pick the newest, typically the candidate). Apply a "
        f"flag (flagctl apply), or start the sidecar with --stable {model}=VERSION, "
        f"--bootstrap-flags FILE, or --unflagged passthrough"
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
        membership=Membership.PINNED,
    )
