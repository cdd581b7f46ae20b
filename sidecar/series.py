"""Counters and histograms for the request path, updated without locks, exported by prometheus_client.

prometheus_client's own metric children take a lock on every update (about 0.5 µs a counter and
1.5 µs a histogram here); the request path records four series per request, so those locks were
most of the sidecar's metrics cost. Every update here happens on the event loop's thread, so
plain integers suffice: a child is a list, an update an index increment. The scrape (another
thread) reads the lists as they are, so a histogram's count and sum may be one sample apart for
an instant; the next scrape is exact. Exposition is prometheus_client's (a ``Collector`` that
yields its metric families), so the text format is the library's.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class CounterSeries(Collector):
    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self._name = name
        self._doc = documentation
        self._labels = list(labels)
        self._values: dict[tuple[str, ...], list[int]] = {}

    def child(self, key: tuple[str, ...]) -> list[int]:
        """The mutable cell of one label set: ``child(key)[0] += 1`` (cache it)."""
        cell = self._values.get(key)
        if cell is None:
            cell = self._values[key] = [0]
        return cell

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._doc, labels=self._labels)
        for key, cell in list(self._values.items()):
            family.add_metric(list(key), cell[0])
        yield family


class HistogramChild:
    __slots__ = ("_bounds", "buckets", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(self._bounds, seconds)] += 1
        self.sum += seconds


class HistogramSeries(Collector):
    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self._name = name
        self._doc = documentation
        self._labels = list(labels)
        self._bounds = tuple(buckets)
        self._children: dict[tuple[str, ...], HistogramChild] = {}

    def child(self, key: tuple[str, ...]) -> HistogramChild:
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = HistogramChild(self._bounds)
        return child

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labels)
        for key, child in list(self._children.items()):
            counts = list(child.buckets)
            cumulative, running = [], 0
            for bound, count in zip((*self._bounds, float("inf")), counts, strict=True):
                running += count
                cumulative.append((_le(bound), running))
            family.add_metric(list(key), cumulative, child.sum)
        yield family


def _le(bound: float) -> str:
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]
