"""Numbers, tables and JSON shared by every part of the suite.

A part records, for each row (a baseline or trafficsplit) and each metric, one value per round.
Rounds alternate the rows, so a slow moment of the machine hits every row alike; the table shows
the median over rounds with the min-max spread, and the JSON keeps every round's value.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SCHEMA_VERSION = 1


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """Median, spread (min-max and IQR) and the raw values of one metric over rounds."""
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "q1": None, "q3": None}
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "q1": q1,
        "q3": q3,
        "values": list(values),
    }


@dataclass(frozen=True)
class Metric:
    key: str
    header: str
    digits: int = 1  # decimals shown in the table


@dataclass
class Target:
    """A figure the design asks for: ``value <op> limit`` with the op ``<=`` or ``>=``."""

    name: str
    value: float | None
    limit: float
    op: str
    unit: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None or math.isnan(self.value):
            return None
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": None if self.value is None or math.isnan(self.value) else self.value,
            "limit": self.limit,
            "op": self.op,
            "unit": self.unit,
            "met": self.met,
        }


@dataclass
class PartReport:
    """One part's table: rows x metrics, one value per round, plus targets and notes."""

    name: str
    title: str
    metrics: list[Metric]
    params: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, row: str, metric: str, value: float) -> None:
        if metric not in {m.key for m in self.metrics}:
            raise KeyError(f"{self.name}: unknown metric {metric!r}")
        if math.isnan(value) or math.isinf(value):
            raise ValueError(f"{self.name}: {row}/{metric} is {value}")
        self.rows.setdefault(row, {}).setdefault(metric, []).append(float(value))

    def median(self, row: str, metric: str) -> float | None:
        values = self.rows.get(row, {}).get(metric)
        return statistics.median(values) if values else None

    def target(self, name: str, value: float | None, op: str, limit: float, unit: str = "") -> None:
        self.targets.append(Target(name, value, limit, op, unit))

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "params": self.params,
            "seconds": round(self.seconds, 2),
            "metrics": {m.key: m.header for m in self.metrics},
            "digits": {m.key: m.digits for m in self.metrics},
            "rows": {
                row: {key: summarise(values) for key, values in metrics.items()}
                for row, metrics in self.rows.items()
            },
            "info": self.info,
            "targets": [t.to_json() for t in self.targets],
            "notes": self.notes,
        }

    def table(self) -> Table:
        table = Table(title=f"{self.title}  [{self.name}]", title_justify="left")
        table.add_column("row", no_wrap=True)
        for metric in self.metrics:
            table.add_column(metric.header, justify="right")
        for row, metrics in self.rows.items():
            cells = [row]
            for metric in self.metrics:
                values = metrics.get(metric.key)
                cells.append(format_cell(values, metric.digits) if values else "")
            table.add_row(*cells)
        return table

    def lines(self) -> list[str]:
        """Targets (met / missed) and notes, printed under the table."""
        return [format_target(t) for t in self.targets] + [f"note: {n}" for n in self.notes]


def format_cell(values: Sequence[float], digits: int) -> str:
    """``median`` and, with several rounds, ``(min-max)``."""
    s = summarise(values)
    text = f"{s['median']:.{digits}f}"
    if s["n"] > 1:
        text += f" ({s['min']:.{digits}f}-{s['max']:.{digits}f})"
    return text


def format_target(t: Target) -> str:
    verdict = {True: "MET", False: "MISSED", None: "n/a"}[t.met]
    value = "n/a" if t.value is None else f"{t.value:.3g}"
    return f"target {t.name}: {value} {t.op} {t.limit:g}{t.unit} -> {verdict}"


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


@dataclass
class SuiteReport:
    quick: bool
    parts: list[PartReport] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            "quick": self.quick,
            "machine": machine(),
            "parts": {p.name: p.to_json() for p in self.parts},
            "errors": self.errors,
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, allow_nan=False))
        tmp.replace(path)


def print_part(part: PartReport, console: Console | None = None) -> None:
    console = console or Console()
    console.print(part.table())
    for line in part.lines():
        console.print(line, highlight=False, markup=False)
    console.print()
