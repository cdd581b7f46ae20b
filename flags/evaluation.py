"""Values of an evaluation: who is asking, and what they get.

Frozen dataclasses and StrEnums, as in the OpenFeature SDK. A :class:`Resolution` does not mention
the user, so the compiled flag builds every possible one up front and evaluation returns a shared
instance: no allocation on the request path.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from flags.schema import Target

AttributeValue = str | int | float | bool
_NO_ATTRIBUTES: Mapping[str, AttributeValue] = MappingProxyType({})


class Reason(enum.StrEnum):
    """Why a subject got its variant (OpenFeature reason names where one fits)."""

    TARGETING_MATCH = "TARGETING_MATCH"  # a rule matched (allow-list or condition)
    SPLIT = "SPLIT"  # in coverage, assigned by the allocation split
    DEFAULT = "DEFAULT"  # outside coverage, or the flag has no allocation
    DISABLED = "DISABLED"  # kill switch: the flag is off
    PINNED = "PINNED"  # the caller asked for an explicit model version
    ERROR = "ERROR"  # evaluation failed; the default variant is served


class ErrorCode(enum.StrEnum):
    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
    GENERAL = "GENERAL"


@dataclass(frozen=True, slots=True)
class Subject:
    """The unit of assignment: a user id plus attributes that rules may test."""

    id: str
    attributes: Mapping[str, AttributeValue] = field(default_factory=lambda: _NO_ATTRIBUTES)


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of evaluating one flag for one subject.

    ``exposed`` is True when the subject counts as part of the experiment: a split (the
    allocation's or a rule's) put them in their variant. Users a rule serves directly (allow-lists,
    ``serve`` rules) are *targeted*, not exposed; users outside coverage get the default without
    being exposed. That is what keeps A/B comparisons fair while a rollout is partial.
    """

    flag_key: str
    variant: str | None
    target: Target | None
    reason: Reason
    revision: int = 0
    rule: str | None = None
    exposed: bool = False
    error_code: ErrorCode | None = None
    error_message: str | None = None

    @property
    def cohort(self) -> str:
        """The label spans and metrics use: the variant name, or "none" when nothing applied."""
        return self.variant or "none"
