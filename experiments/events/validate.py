"""Checking an outcome before it is accepted: pure, shared by the ``Track`` RPC and ``flagctl
track`` so both refuse the same things with the same words.

Refused: an unknown flag, a flag without an ``experiment`` section, a metric the section does not
declare, a value that is not a finite number, a missing or overlong user id or idempotency key,
and a time more than a day in the future (a clock or unit bug: seconds sent as milliseconds).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping

from experiments.events.model import Outcome
from flags.experiment_plan import experiment_id, trackable_metrics
from flags.schema import FlagSpec

MAX_ID_LENGTH = 256
MAX_FUTURE_MS = 24 * 3600 * 1000
MIN_TIME_MS = 946_684_800_000  # 2000-01-01: anything earlier is seconds sent as milliseconds


class InvalidEvent(ValueError):
    """The event cannot be accepted as sent; the message says what to fix."""


def outcome_from(
    flags: Mapping[str, FlagSpec],
    *,
    flag: str,
    user_id: str,
    metric: str,
    value: float,
    time_ms: int,
    idempotency_key: str,
    now_ms: int,
) -> Outcome:
    """A validated outcome. ``time_ms`` 0 means now; an empty key gets a random event id (so a
    retried call counts twice: callers that retry should send a key)."""
    if not flag:
        raise InvalidEvent("`flag` is required: the flag (model name) the experiment runs on")
    spec = flags.get(flag)
    if spec is None:
        raise InvalidEvent(f"unknown flag {flag!r}: track outcomes for a flag that exists")
    plan = spec.experiment
    if plan is None:
        raise InvalidEvent(
            f"flag {flag!r} has no `experiment` section declaring its metrics; add one "
            "(docs/experiments.md) before tracking outcomes"
        )
    if not user_id:
        raise InvalidEvent("`user_id` is required: the user the outcome belongs to")
    if len(user_id) > MAX_ID_LENGTH:
        raise InvalidEvent(f"`user_id` is longer than {MAX_ID_LENGTH} characters")
    trackable = trackable_metrics(plan)
    if metric not in trackable:
        declared = next((m for m in plan.metrics if m.name == metric), None)
        if declared is not None:  # a ratio: its parts are what happens
            raise InvalidEvent(
                f"metric {metric!r} of flag {flag!r} is a ratio: track its numerator "
                f"{declared.numerator!r} and denominator {declared.denominator!r} instead"
            )
        raise InvalidEvent(
            f"metric {metric!r} is not declared in flag {flag!r}'s experiment section "
            f"(declared: {', '.join(sorted(trackable))})"
        )
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidEvent(f"`value` must be a finite number, not {value!r}")
    if len(idempotency_key) > MAX_ID_LENGTH:
        raise InvalidEvent(f"`idempotency_key` is longer than {MAX_ID_LENGTH} characters")
    if time_ms == 0:
        time_ms = now_ms
    elif time_ms < MIN_TIME_MS:
        raise InvalidEvent(
            f"`time` {time_ms} is before the year 2000: send Unix milliseconds (or 0 for now)"
        )
    elif time_ms > now_ms + MAX_FUTURE_MS:
        raise InvalidEvent(f"`time` {time_ms} is more than a day in the future (Unix ms)")
    return Outcome(
        event_id=idempotency_key or uuid.uuid4().hex,
        experiment=experiment_id(spec.key, spec.salt, plan),
        flag=flag,
        user_id=user_id,
        metric=metric,
        value=float(value),
        time_ms=int(time_ms),
    )
