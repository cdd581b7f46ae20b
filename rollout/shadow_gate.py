"""Shadow health: is the shadow variant fit for its first ramp step? Pure, no I/O, no clock.

The controller reads the ``shadow`` group of the fleet windows (:mod:`signals`) for the shadow
target over some window, merges it into one :class:`~signals.model.VersionStats`, and asks
:func:`shadow_health` with the flag's ``shadow`` section. Every sidecar records one attempt per
shadow call (:mod:`sidecar.shadow`): result ``AGREE`` or ``DISAGREE`` for a compared answer, the
error kind (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``INVALID_ARGUMENT``, ...) for a failed call.
So, fleet-wide:

- compared = AGREE + DISAGREE; agreement = AGREE / compared;
- errors = every other result (an ``OK`` or ``CANCELLED`` is not counted as an error, should a
  recorder ever write one); error rate = errors / (compared + errors).

Rules (from the flag's ``shadow`` section): ``max_error_rate`` is judged once ``min_compared``
calls were made, ``min_agreement`` once ``min_compared`` answers were compared; a rule that
cannot be judged yet makes the verdict ``wait``; a breach makes it ``fail`` at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from flags.schema import Shadow
from signals.model import VersionStats

AGREE = "AGREE"
DISAGREE = "DISAGREE"
_NOT_ERRORS = frozenset({AGREE, DISAGREE, "OK", "CANCELLED"})


class ShadowVerdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"  # too few shadow calls to judge yet


@dataclass(frozen=True, slots=True)
class ShadowHealth:
    verdict: ShadowVerdict
    calls: int
    compared: int
    agreed: int
    errors: int
    reasons: tuple[str, ...]

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None


def shadow_counts(stats: VersionStats) -> tuple[int, int, int]:
    """(agreed, compared, errors) of the shadow group's measurements."""
    agreed = stats.errors.get(AGREE, 0)
    compared = agreed + stats.errors.get(DISAGREE, 0)
    errors = sum(n for result, n in stats.errors.items() if result not in _NOT_ERRORS)
    return agreed, compared, errors


def shadow_health(stats: VersionStats, spec: Shadow) -> ShadowHealth:
    """The verdict on the shadow variant's measurements against the flag's requirements."""
    agreed, compared, errors = shadow_counts(stats)
    calls = compared + errors
    reasons: list[str] = []
    waiting: list[str] = []
    if calls < max(spec.min_compared, 1):
        waiting.append(f"{calls} shadow calls, {spec.min_compared} needed to judge errors")
    elif errors / calls > spec.max_error_rate:
        reasons.append(
            f"shadow error rate {errors / calls:.4f} ({errors}/{calls}) above "
            f"max_error_rate {spec.max_error_rate}"
        )
    if spec.min_agreement > 0:
        if compared < max(spec.min_compared, 1):
            waiting.append(f"{compared} answers compared, {spec.min_compared} needed")
        elif agreed / compared < spec.min_agreement:
            reasons.append(
                f"agreement {agreed / compared:.4f} ({agreed}/{compared}) below "
                f"min_agreement {spec.min_agreement}"
            )
    if reasons:
        verdict = ShadowVerdict.FAIL
    elif waiting:
        verdict, reasons = ShadowVerdict.WAIT, waiting
    else:
        verdict = ShadowVerdict.PASS
    return ShadowHealth(verdict, calls, compared, agreed, errors, tuple(reasons))
