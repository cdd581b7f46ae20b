"""What happened to one request, as immutable values every surface renders.

:class:`Assignment` is built once per request (flag, revision, variant, reason, membership, the
version that served, fallback) and rendered by every surface: KServe response parameters,
trailing metadata, the native ``Assignment`` message, span attributes and metric labels
(:mod:`sidecar.render`). :class:`RequestOutcome` adds every backend attempt, each keyed by the
target that was *attempted*, so a candidate's failures are counted against the candidate even
when the default variant answered the user.

They are NamedTuples rather than frozen dataclasses: three are built per request, and a tuple
is built about four times faster (immutable all the same).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from sidecar.plan import Hop, Membership, RoutePlan


class FallbackCause(enum.StrEnum):
    """Why the default variant answered instead of the cohort's version."""

    ERROR = "error"  # the cohort's version failed (unavailable, internal, not found, queue full)
    TIMEOUT = "timeout"  # it did not answer within its per-attempt budget
    CIRCUIT_OPEN = "circuit_open"  # it failed repeatedly; not called until its circuit closes
    NOT_READY = "not_ready"  # readiness checks say the backend does not have it loaded


class Settlement(enum.StrEnum):
    """How a request ended: the outcome label of every request series."""

    SERVED = "served"  # the cohort's (or the pinned / stable) version answered
    FALLBACK_ERROR = "fallback_error"
    FALLBACK_TIMEOUT = "fallback_timeout"
    FALLBACK_CIRCUIT_OPEN = "fallback_circuit_open"
    FALLBACK_NOT_READY = "fallback_not_ready"
    FAILED = "failed"  # an error went back to the caller

    @classmethod
    def of(cls, fallback: FallbackCause | None) -> Settlement:
        return cls.SERVED if fallback is None else cls(f"fallback_{fallback}")


# Attempt results besides the backend's ErrorKind values.
OK = "OK"
SKIPPED_CIRCUIT_OPEN = "CIRCUIT_OPEN"  # not sent: the circuit is open
SKIPPED_NOT_READY = "NOT_READY"  # not sent: the version is not loaded on the backend
CANCELLED = "CANCELLED"  # the caller went away mid-call

# The rpc of a routed ModelStreamInfer stream (sidecar.streams): settled once, as one request.
STREAM_RPC = "ModelStreamInfer"


class Attempt(NamedTuple):
    """One backend call (or a call skipped for an open circuit or a missing version)."""

    backend: str
    model: str
    version: str
    result: str  # OK, an ErrorKind value, CIRCUIT_OPEN, NOT_READY or CANCELLED
    seconds: float  # 0 when skipped

    @property
    def sent(self) -> bool:
        return self.result not in (SKIPPED_CIRCUIT_OPEN, SKIPPED_NOT_READY)


class Assignment(NamedTuple):
    """The caller's assignment, as every surface reports it."""

    plan: RoutePlan
    served: Hop  # the hop that answered (or would answer, for Assign and failed requests)
    served_version: str  # what the backend says served ("" asks for its default)
    fallback: FallbackCause | None = None

    @property
    def flag(self) -> str:
        return self.plan.flag

    @property
    def variant(self) -> str:
        return self.plan.variant

    @property
    def reason(self) -> str:
        return self.plan.reason

    @property
    def revision(self) -> int:
        return self.plan.revision

    @property
    def membership(self) -> Membership:
        return self.plan.membership

    @property
    def exposed(self) -> bool:
        return self.plan.membership is Membership.EXPOSED

    @classmethod
    def planned(cls, plan: RoutePlan) -> Assignment:
        return cls(plan, plan.primary, plan.primary.version)


class RequestOutcome(NamedTuple):
    """One settled request: assignment, attempts in order, final status and duration."""

    rpc: str
    assignment: Assignment
    attempts: tuple[Attempt, ...]
    status: str  # gRPC status code name: "OK" or the error's
    message: str
    seconds: float

    @property
    def settlement(self) -> Settlement:
        if self.status != "OK":
            return Settlement.FAILED
        return Settlement.of(self.assignment.fallback)
