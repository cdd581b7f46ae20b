"""Exposure recording: the observer that notes, once per (experiment, user, variant), that a user
in an experiment was served.

Only requests settled OK whose membership is ``exposed`` (a split chose the variant) count, and
only for flags with an ``experiment`` section. The variant recorded is the cohort (intention to
treat), with the version that actually served beside it (the default's, after a fallback).

Cost on the request path: a tuple hash and one or two set look-ups; a new exposure adds one
frozen value appended to the sink's buffer. No I/O: the sink flushes in batches (see
:mod:`experiments.events.sinks`).

Deduplication is bounded: two generations of at most ``capacity`` hashed keys each. When the
current generation is full it becomes the previous one and the old previous is dropped, so
memory stays under 2 x capacity keys (about 70 bytes each) and a key seen in either generation
is not recorded again. A user not seen for ``capacity`` new exposures may be recorded again, and
a restarted sidecar starts empty: such duplicates cost one stream entry each and collapse at
ingestion, which deduplicates by (experiment, user, variant) and keeps the first time seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from experiments.events.model import Exposure
from experiments.events.sinks import EventSink
from flags.compiled import CompiledFlag
from flags.experiment_plan import experiment_id
from flags.schema import FlagSpec
from flags.store import FlagStore
from sidecar.observers import Exchange, Observer
from sidecar.outcome import RequestOutcome
from sidecar.plan import Membership

DEFAULT_DEDUPE_CAPACITY = 100_000

# (experiment id, segment attributes, split text per rule name; None: the allocation's)
_Info = tuple[str, tuple[str, ...], dict[str | None, str]] | None


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class ExposureRecorder(Observer):
    def __init__(
        self,
        store: FlagStore,
        sink: EventSink,
        *,
        capacity: int = DEFAULT_DEDUPE_CAPACITY,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._store = store
        self._sink = sink
        self._capacity = max(1, capacity)
        self._clock_ms = clock_ms
        self._current: set[int] = set()
        self._previous: set[int] = set()
        self._flags: dict[str, tuple[CompiledFlag, _Info]] = {}
        self.recorded = 0
        self.suppressed = 0  # duplicates not recorded

    def on_settled(self, exchange: Exchange, outcome: RequestOutcome) -> None:
        plan = outcome.assignment.plan
        if plan.membership is not Membership.EXPOSED or outcome.status != "OK":
            return
        info = self._experiment(plan.flag)
        if info is None:
            return
        experiment, segments, splits = info
        subject = exchange.subject
        key = hash((experiment, subject.id, plan.variant))
        if key in self._current:
            self.suppressed += 1
            return
        seen_before = key in self._previous
        self._remember(key)  # may rotate the generations: look in the previous one first
        if seen_before:
            self.suppressed += 1
            return
        attributes = subject.attributes
        self.recorded += 1
        # tuple.__new__ skips the NamedTuple's Python-level __new__ (~250 ns on this path).
        exposure: Exposure = tuple.__new__(
            Exposure,
            (
                experiment,
                plan.flag,
                subject.id,
                plan.variant,
                outcome.assignment.served_version,
                self._clock_ms(),
                tuple([(s, str(attributes[s])) for s in segments if s in attributes])
                if segments
                else (),
                splits.get(plan.rule, ""),
            ),
        )
        self._sink.record(exposure)

    def _remember(self, key: int) -> None:
        if len(self._current) >= self._capacity:
            self._previous = self._current
            self._current = set()
        self._current.add(key)

    def _experiment(self, flag_key: str) -> _Info:
        """The flag's experiment id and segments, computed once per flag revision."""
        flag = self._store.snapshot.get(flag_key)
        if flag is None:
            return None
        cached = self._flags.get(flag_key)
        if cached is not None and cached[0] is flag:
            return cached[1]
        spec = flag.spec
        plan = spec.experiment
        info: _Info = None
        if plan is not None:
            info = (experiment_id(spec.key, spec.salt, plan), tuple(plan.segments), _splits(spec))
        self._flags[flag_key] = (flag, info)
        return info


def split_text(split: Mapping[str, float]) -> str:
    """A split as recorded with exposures: ``control=80,candidate=20`` (variants with a share)."""
    return ",".join(f"{name}={share:g}" for name, share in split.items() if share > 0)


def _splits(spec: FlagSpec) -> dict[str | None, str]:
    """The split text of each splitting rule (by name) and of the allocation (key None): what
    was in force for an exposure, so SRM can compare within each constant-split phase."""
    splits: dict[str | None, str] = {}
    for index, rule in enumerate(spec.rules):
        if rule.split is not None:  # named as flags.compiled names rules
            splits[rule.name or f"rule-{index}"] = split_text(rule.split)
    if spec.allocation is not None:
        splits[None] = split_text(spec.allocation.split)
    return splits
