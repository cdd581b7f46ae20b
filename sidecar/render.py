"""Every surface that tells the assignment renders it from one :class:`Assignment` here.

KServe response parameters (and their wire bytes for the raw pass-through), trailing metadata
and span attributes. The native ``Assignment`` message is rendered in :mod:`sidecar.native_api`
(it needs the generated module) from the same fields; metric labels in :mod:`sidecar.observers`.
"""

from __future__ import annotations

import functools
from typing import Any

from flags.schema import Scalar
from sidecar import telemetry as tm
from sidecar import wire
from sidecar.outcome import Assignment

Metadata = tuple[tuple[str, str], ...]


def response_parameters(a: Assignment) -> dict[str, Scalar]:
    """The response parameters that tell a KServe caller its assignment (docs/api.md)."""
    return _parameters(a.flag, a.variant, a.reason, a.revision, a.membership, a.fallback or "")


def response_suffix(a: Assignment) -> bytes:
    """:func:`response_parameters` as bytes to append to a serialized response (cached: one
    value per cohort and flag revision)."""
    return _suffix(a.flag, a.variant, a.reason, a.revision, a.membership, a.fallback or "")


def trailing_metadata(a: Assignment) -> Metadata:
    plan = a.plan
    return _trailing(
        plan.flag, plan.variant, plan.reason, plan.membership, a.served_version, a.fallback or ""
    )


@functools.lru_cache(maxsize=4096)
def _trailing(
    flag: str, variant: str, reason: str, membership: str, version: str, cause: str
) -> Metadata:
    return (
        ("x-trafficsplit-flag", flag),
        ("x-trafficsplit-variant", variant),
        ("x-trafficsplit-reason", reason),
        ("x-trafficsplit-membership", str(membership)),
        ("x-trafficsplit-model-version", version),
        ("x-trafficsplit-fallback", "true" if cause else "false"),
        ("x-trafficsplit-fallback-cause", cause),
    )


def planned_span_attributes(a: Assignment) -> dict[str, Any]:
    """Attributes a SERVER span starts with (the plan); :func:`settled_span_attributes` then
    overwrites what the outcome changed, before the span ends."""
    attributes: dict[str, Any] = {
        tm.FLAG_KEY: a.flag,
        tm.FLAG_VARIANT: a.variant,
        tm.FLAG_PROVIDER: tm.PROVIDER_NAME,
        tm.FLAG_REVISION: a.revision,
        tm.COHORT: a.variant or "none",
        tm.REASON: a.reason,
        tm.MEMBERSHIP: str(a.membership),
        tm.EXPOSED: a.exposed,
        tm.MODEL_NAME: a.served.model,
        tm.MODEL_VERSION: a.served_version,
        tm.FALLBACK: False,
    }
    if a.plan.rule:
        attributes[tm.RULE] = a.plan.rule
    return attributes


def settled_span_attributes(a: Assignment) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        tm.MODEL_NAME: a.served.model,
        tm.MODEL_VERSION: a.served_version,
        tm.FALLBACK: a.fallback is not None,
    }
    if a.fallback is not None:
        attributes[tm.FALLBACK_CAUSE] = str(a.fallback)
        attributes[tm.ATTEMPTED_VERSION] = a.plan.primary.version
    return attributes


@functools.lru_cache(maxsize=4096)
def _parameters(
    flag: str, variant: str, reason: str, revision: int, membership: str, cause: str
) -> dict[str, Scalar]:
    return {
        "trafficsplit.flag": flag,
        "trafficsplit.variant": variant,
        "trafficsplit.reason": reason,
        "trafficsplit.membership": str(membership),
        "trafficsplit.fallback": bool(cause),
        "trafficsplit.fallback_cause": cause,
        "trafficsplit.flag_revision": revision,
    }


@functools.lru_cache(maxsize=4096)
def _suffix(
    flag: str, variant: str, reason: str, revision: int, membership: str, cause: str
) -> bytes:
    return wire.parameter_entries(
        wire.RESPONSE_PARAMETERS, _parameters(flag, variant, reason, revision, membership, cause)
    )
