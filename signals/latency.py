"""The one latency bucket scheme: every place that records a duration uses these boundaries.

Boundaries are log-spaced, ``50 µs * 2^(k/8)`` for k = 0‥181 (50 µs to 323 s), so each bucket is
9 % wider than the one before and any quantile read from a histogram is within ±4.5 % of the
truth, from sub-millisecond embedded models to 5-minute LLM generations. Because the boundaries
are fixed, histograms recorded by many sidecars merge exactly (add the counts bucket by bucket)
and p50/p95/p99 of the fleet are read from the sum.

Prometheus gets :data:`PROMETHEUS_BUCKETS`, a subset of the same boundaries (the fine boundary
nearest each of ~40 round figures), dense around the latencies teams set targets at: 0.5 ms,
100 ms, 200 ms, 1 s, 3 s and 8.5 s each have a boundary within 4.5 %.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

FIRST_BOUNDARY_S = 50e-6
STEPS_PER_DOUBLING = 8
BOUNDARY_COUNT = 182

BOUNDARIES: tuple[float, ...] = tuple(
    FIRST_BOUNDARY_S * 2 ** (k / STEPS_PER_DOUBLING) for k in range(BOUNDARY_COUNT)
)

# Round figures (seconds) that dashboards and SLOs are written in.
_ROUND_FIGURES = (
    50e-6, 100e-6, 200e-6, 300e-6, 500e-6, 750e-6,
    1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 7.5e-3,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.5, 8.5, 10.0,
    15.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


def bucket_index(seconds: float) -> int:
    """Index of the bucket holding ``seconds``: the first boundary ≥ it (BOUNDARY_COUNT = +Inf)."""
    if seconds <= FIRST_BOUNDARY_S:
        return 0
    # Closed form, then one correction step against float rounding at the boundary itself.
    index = math.ceil(STEPS_PER_DOUBLING * math.log2(seconds / FIRST_BOUNDARY_S) - 1e-9)
    if index >= BOUNDARY_COUNT:
        return BOUNDARY_COUNT
    if BOUNDARIES[index] < seconds:
        index += 1
    elif index > 0 and BOUNDARIES[index - 1] >= seconds:
        index -= 1
    return index


def nearest_boundary(seconds: float) -> float:
    i = bisect.bisect_left(BOUNDARIES, seconds)
    candidates = BOUNDARIES[max(0, i - 1) : i + 1]
    return min(candidates, key=lambda b: abs(math.log(b / seconds)))


PROMETHEUS_BUCKETS: tuple[float, ...] = tuple(
    sorted({nearest_boundary(s) for s in _ROUND_FIGURES} | {BOUNDARIES[-1]})
)  # the last fine boundary too, so nothing up to 300 s lands in +Inf


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0 < q ≤ 1) of a histogram over :data:`BOUNDARIES`.

    ``counts`` has BOUNDARY_COUNT + 1 entries (the last is the +Inf bucket). Interpolates
    log-linearly inside the bucket, as the boundaries are log-spaced. None for no samples.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= BOUNDARY_COUNT:
                return BOUNDARIES[-1]
            upper = BOUNDARIES[index]
            lower = BOUNDARIES[index - 1] if index else upper / 2 ** (1 / STEPS_PER_DOUBLING)
            fraction = (rank - seen) / count
            return float(lower * (upper / lower) ** fraction)
        seen += count
    return BOUNDARIES[-1]
