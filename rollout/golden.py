"""The golden-set gate, pure: two versions' answers on a fixed labelled set, judged.

:func:`judge` takes the expected labels and each version's run (predicted label per sample, or
None where the call failed, and each call's latency) and returns a :class:`GoldenResult`:
accuracy of each version, their agreement, latency p50/p99, and the verdict against the flag's
``golden.max_accuracy_drop``. The runner that produces the runs is :mod:`rollout.golden_runner`;
the result's JSON (stored at ``<prefix>golden:<flag>``) is :meth:`GoldenResult.to_json`.

Verdict ``pass`` when the candidate answered every sample and its accuracy is at least the
control's minus the tolerance; ``fail`` otherwise (a candidate that errors on the golden set is
not fit for users, whatever its accuracy on the rest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Accuracies are ratios of integers; compare them with a margin far below 1/len(any golden set).
_EPSILON = 1e-12


@dataclass(frozen=True, slots=True)
class VersionRun:
    """One version's answers to the golden set, in sample order."""

    variant: str
    model: str
    version: str
    predictions: tuple[int | None, ...]  # None: the call for that sample failed
    seconds: tuple[float, ...]  # each call's latency
    error_examples: tuple[str, ...] = ()  # the first few failure messages, for the operator


@dataclass(frozen=True, slots=True)
class VersionScore:
    variant: str
    model: str
    version: str
    correct: int
    errors: int
    samples: int
    p50_ms: float | None
    p99_ms: float | None
    error_examples: tuple[str, ...] = ()

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples if self.samples else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "model": self.model,
            "version": self.version,
            "accuracy": self.accuracy,
            "correct": self.correct,
            "errors": self.errors,
            "samples": self.samples,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "error_examples": list(self.error_examples),
        }


@dataclass(frozen=True, slots=True)
class GoldenResult:
    flag: str
    samples: int
    control: VersionScore
    candidate: VersionScore
    agreement: float  # share of samples where both answered the same label
    max_accuracy_drop: float
    passed: bool
    reasons: tuple[str, ...]
    context: dict[str, Any] = field(default_factory=dict)  # file, backend, revision, timestamp

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"

    @property
    def accuracy_drop(self) -> float:
        return self.control.accuracy - self.candidate.accuracy

    def to_json(self) -> dict[str, Any]:
        """The stored document (docs/rollouts.md, "Golden-set gate")."""
        return {
            "flag": self.flag,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "samples": self.samples,
            "agreement": self.agreement,
            "accuracy_drop": self.accuracy_drop,
            "max_accuracy_drop": self.max_accuracy_drop,
            "control": self.control.to_dict(),
            "candidate": self.candidate.to_dict(),
            **self.context,
        }


def percentile_ms(seconds: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (0 < q ≤ 1) in milliseconds; None without samples."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1] * 1000.0


def score(run: VersionRun, labels: Sequence[int]) -> VersionScore:
    if len(run.predictions) != len(labels):
        raise ValueError(
            f"version {run.version}: {len(run.predictions)} answers for {len(labels)} labels"
        )
    correct = sum(
        1 for p, y in zip(run.predictions, labels, strict=True) if p is not None and p == y
    )
    errors = sum(1 for p in run.predictions if p is None)
    return VersionScore(
        run.variant,
        run.model,
        run.version,
        correct,
        errors,
        len(labels),
        percentile_ms(run.seconds, 0.5),
        percentile_ms(run.seconds, 0.99),
        run.error_examples,
    )


def judge(
    flag: str,
    labels: Sequence[int],
    control: VersionRun,
    candidate: VersionRun,
    *,
    max_accuracy_drop: float,
    context: dict[str, Any] | None = None,
) -> GoldenResult:
    """Score both runs and decide: pass, or fail with the reasons."""
    c, k = score(control, labels), score(candidate, labels)
    both = [
        (a, b)
        for a, b in zip(control.predictions, candidate.predictions, strict=True)
        if a is not None and b is not None
    ]
    agreement = sum(1 for a, b in both if a == b) / len(labels) if labels else 0.0
    reasons: list[str] = []
    if not labels:
        reasons.append("the golden set is empty")
    if k.errors:
        reasons.append(f"candidate version {k.version} failed on {k.errors} of {k.samples} samples")
    drop = c.accuracy - k.accuracy
    if labels and drop > max_accuracy_drop + _EPSILON:
        reasons.append(
            f"candidate accuracy {k.accuracy:.4f} is {drop:.4f} below control's {c.accuracy:.4f} "
            f"(max_accuracy_drop {max_accuracy_drop})"
        )
    return GoldenResult(
        flag,
        len(labels),
        c,
        k,
        agreement,
        max_accuracy_drop,
        passed=not reasons,
        reasons=tuple(reasons),
        context=dict(context or {}),
    )
