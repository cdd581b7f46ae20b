"""The analytical store: exposures and outcomes in an embedded DuckDB file, aggregated per user
in SQL into per-variant sufficient statistics (:mod:`experiments.aggregates`).

Idempotent by construction: an exposure is keyed by (experiment, user, variant) and keeps the
earliest time seen (with that sighting's version and segments); an outcome is keyed by
(experiment, event id) and kept once. Ingesting the same events twice, or a sidecar's duplicates
after a restart, changes nothing.

Attribution: each user belongs to the variant of their *first* exposure in the experiment. A user
exposed to several variants (a ramp moved them, a rollback) is *mixed*: counted and excluded from
every comparison unless ``include_mixed``. An outcome counts for a user if it happened at or
after their first exposure (less ``slack_ms`` for clocks that disagree), whenever it arrived.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import duckdb

from experiments.aggregates import ExposureSummary, MetricAggregates, Stats
from experiments.events.model import Event, Exposure, Outcome
from experiments.plan import ExperimentPlan
from experiments.stats.summary import MeanStats, RatioStats

DEFAULT_SLACK_MS = 60_000
DAY_MS = 86_400_000
MISSING = "(missing)"

SCHEMA = """
CREATE TABLE IF NOT EXISTS exposures (
    experiment VARCHAR NOT NULL, user_id VARCHAR NOT NULL, variant VARCHAR NOT NULL,
    flag VARCHAR NOT NULL, version VARCHAR NOT NULL, first_ms BIGINT NOT NULL,
    segments VARCHAR NOT NULL, split VARCHAR NOT NULL DEFAULT '',
    PRIMARY KEY (experiment, user_id, variant));
CREATE TABLE IF NOT EXISTS outcomes (
    experiment VARCHAR NOT NULL, event_id VARCHAR NOT NULL, flag VARCHAR NOT NULL,
    user_id VARCHAR NOT NULL, metric VARCHAR NOT NULL, value DOUBLE NOT NULL,
    time_ms BIGINT NOT NULL,
    PRIMARY KEY (experiment, event_id));
CREATE TABLE IF NOT EXISTS ingest_state (source VARCHAR PRIMARY KEY, position BIGINT NOT NULL);
"""

_UPSERT_EXPOSURES = """
INSERT INTO exposures
SELECT experiment, user_id, variant, arg_min(flag, first_ms), arg_min(version, first_ms),
       min(first_ms), arg_min(segments, first_ms), arg_min(split, first_ms)
FROM (SELECT unnest($experiment) AS experiment, unnest($user_id) AS user_id,
             unnest($variant) AS variant, unnest($flag) AS flag, unnest($version) AS version,
             unnest($first_ms) AS first_ms, unnest($segments) AS segments,
             unnest($split) AS split)
GROUP BY experiment, user_id, variant
ON CONFLICT (experiment, user_id, variant) DO UPDATE SET
    flag = CASE WHEN excluded.first_ms < first_ms THEN excluded.flag ELSE flag END,
    version = CASE WHEN excluded.first_ms < first_ms THEN excluded.version ELSE version END,
    segments = CASE WHEN excluded.first_ms < first_ms THEN excluded.segments ELSE segments END,
    split = CASE WHEN excluded.first_ms < first_ms THEN excluded.split ELSE split END,
    first_ms = least(first_ms, excluded.first_ms)
"""

_INSERT_OUTCOMES = """
INSERT INTO outcomes
SELECT DISTINCT ON (experiment, event_id) *
FROM (SELECT unnest($experiment) AS experiment, unnest($event_id) AS event_id,
             unnest($flag) AS flag, unnest($user_id) AS user_id, unnest($metric) AS metric,
             unnest($value) AS value, unnest($time_ms) AS time_ms)
ON CONFLICT DO NOTHING
"""

_USERS = """
CREATE OR REPLACE TEMP TABLE users AS
SELECT user_id, arg_min(variant, first_ms) AS variant, min(first_ms) AS first_ms,
       arg_min(segments, first_ms) AS segments, arg_min(split, first_ms) AS split,
       count(*) AS variants,
       string_agg(variant, '+' ORDER BY variant) AS seen
FROM exposures WHERE experiment = $experiment GROUP BY user_id
"""


@dataclass(frozen=True, slots=True)
class Added:
    exposures: int  # new (experiment, user, variant) rows
    outcomes: int  # new outcome events


def _per_user(aggregation: str, name: str) -> str:
    """SQL for one user's value of metric ``name`` over the joined ``ev`` rows."""
    hit = f"ev.metric = {name}"
    return {
        "any": f"CAST(coalesce(bool_or({hit} AND ev.value <> 0), false) AS DOUBLE)",
        "count": f"CAST(count(ev.value) FILTER (WHERE {hit}) AS DOUBLE)",
        "sum": f"coalesce(sum(ev.value) FILTER (WHERE {hit}), 0.0)",
        "mean": f"avg(ev.value) FILTER (WHERE {hit})",  # NULL without events: not counted
    }[aggregation]


class ExperimentStore:
    """One DuckDB file (or ``:memory:``). Not thread-safe: one command owns it at a time."""

    def __init__(self, path: Path | str = ":memory:") -> None:
        self.path = str(path)
        self.con = duckdb.connect(self.path)
        self.con.execute(SCHEMA)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> ExperimentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- ingestion -------------------------------------------------------------------------

    def add(self, events: Iterable[Event]) -> Added:
        """Insert a batch of events idempotently, in one transaction."""
        exposures: list[Exposure] = []
        outcomes: list[Outcome] = []
        for event in events:
            if isinstance(event, Exposure):
                exposures.append(event)
            else:
                outcomes.append(event)
        before = self._counts()
        self.con.execute("BEGIN")
        try:
            if exposures:
                self.con.execute(_UPSERT_EXPOSURES, _exposure_columns(exposures))
            if outcomes:
                self.con.execute(_INSERT_OUTCOMES, _outcome_columns(outcomes))
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        after = self._counts()
        return Added(after[0] - before[0], after[1] - before[1])

    def _counts(self) -> tuple[int, int]:
        row = self.con.execute(
            "SELECT (SELECT count(*) FROM exposures), (SELECT count(*) FROM outcomes)"
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def position(self, source: str) -> int:
        row = self.con.execute(
            "SELECT position FROM ingest_state WHERE source = ?", [source]
        ).fetchone()
        return int(row[0]) if row else 0

    def set_position(self, source: str, position: int) -> None:
        self.con.execute("INSERT OR REPLACE INTO ingest_state VALUES (?, ?)", [source, position])

    # ---- analysis --------------------------------------------------------------------------

    def experiments(self) -> list[tuple[str, str, int]]:
        """(experiment, flag, users) for every experiment stored."""
        rows = self.con.execute(
            "SELECT experiment, any_value(flag), count(DISTINCT user_id) FROM exposures "
            "GROUP BY experiment ORDER BY experiment"
        ).fetchall()
        return [(str(e), str(f), int(n)) for e, f, n in rows]

    def exposure_summary(self, experiment: str) -> ExposureSummary:
        self.con.execute(_USERS, {"experiment": experiment})
        users = dict(
            self.con.execute(
                "SELECT variant, count(*) FROM users WHERE variants = 1 GROUP BY variant"
            ).fetchall()
        )
        mixed = dict(
            self.con.execute(
                "SELECT seen, count(*) FROM users WHERE variants > 1 GROUP BY seen"
            ).fetchall()
        )
        new_by_day: dict[str, dict[str, int]] = {}
        for day, variant, n in self.con.execute(
            "SELECT strftime(make_timestamp(first_ms * 1000), '%Y-%m-%d') AS day, variant, "
            "count(*) FROM users WHERE variants = 1 GROUP BY ALL ORDER BY ALL"
        ).fetchall():
            new_by_day.setdefault(str(day), {})[str(variant)] = int(n)
        phases: dict[str, dict[str, int]] = {}
        for split, variant, n in self.con.execute(
            "SELECT split, variant, count(*) FROM users WHERE variants = 1 GROUP BY ALL "
            "ORDER BY min(first_ms), variant"
        ).fetchall():
            phases.setdefault(str(split), {})[str(variant)] = int(n)
        span = self.con.execute("SELECT min(first_ms), max(first_ms) FROM users").fetchone()
        assert span is not None
        return ExposureSummary(
            experiment=experiment,
            users=MappingProxyType({str(k): int(v) for k, v in users.items()}),
            mixed_users=sum(int(v) for v in mixed.values()),
            mixed_by_variants=MappingProxyType({str(k): int(v) for k, v in mixed.items()}),
            new_by_day=MappingProxyType(new_by_day),
            by_split=MappingProxyType(phases),
            first_ms=None if span[0] is None else int(span[0]),
            last_ms=None if span[1] is None else int(span[1]),
        )

    def metric(
        self,
        experiment: str,
        plan: ExperimentPlan,
        name: str,
        *,
        segments: Sequence[str] | None = None,
        daily: bool = False,
        include_mixed: bool = False,
        as_of_ms: int | None = None,
        slack_ms: int = DEFAULT_SLACK_MS,
    ) -> MetricAggregates:
        """Per-variant statistics of the plan's metric ``name``; per segment value (the plan's
        segments unless given) and per day if asked."""
        spec = plan.metric(name)
        self.con.execute(_USERS, {"experiment": experiment})
        end = as_of_ms if as_of_ms is not None else (1 << 62)
        labels, ends = ["all"], [end]
        if daily:
            labels, ends = self._days(end)
            labels, ends = ["all", *labels], [end, *ends]
        parts = [spec]
        if spec.numerator is not None and spec.denominator is not None:
            parts = [plan.metric(spec.numerator), plan.metric(spec.denominator)]
        ratio = len(parts) == 2
        names = [p.name for p in parts]
        x = _per_user(parts[0].aggregation or "sum", "$m0")
        y = _per_user(parts[-1].aggregation or "sum", "$m1") if ratio else "NULL"
        self.con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE per_user AS
            WITH days AS (SELECT unnest($labels) AS day, unnest($ends) AS day_end),
            eligible AS (
                SELECT d.day, d.day_end, u.* FROM users u JOIN days d ON u.first_ms < d.day_end
                WHERE $include_mixed OR u.variants = 1),
            ev AS (SELECT user_id, metric, value, time_ms FROM outcomes
                   WHERE experiment = $experiment AND metric IN ($m0, $m1))
            SELECT e.day, e.user_id, e.variant, e.segments, {x} AS x, {y} AS y
            FROM eligible e LEFT JOIN ev ON ev.user_id = e.user_id
                 AND ev.time_ms >= e.first_ms - $slack AND ev.time_ms < e.day_end
            GROUP BY e.day, e.user_id, e.variant, e.segments
            """,
            {
                "labels": labels,
                "ends": ends,
                "include_mixed": include_mixed,
                "experiment": experiment,
                "m0": names[0],
                "m1": names[-1],
                "slack": slack_ms,
            },
        )
        sums = (
            "count(*) FILTER (WHERE x IS NOT NULL AND y IS NOT NULL), sum(x), sum(x*x), sum(y), "
            "sum(y*y), sum(x*y)"
            if ratio
            else "count(x), sum(x), sum(x*x)"
        )
        by_day: dict[str, dict[str, Stats]] = {}
        for row in self.con.execute(
            f"SELECT day, variant, {sums} FROM per_user GROUP BY ALL ORDER BY ALL"
        ).fetchall():
            by_day.setdefault(str(row[0]), {})[str(row[1])] = _stats(row[2:], ratio)
        by_segment: dict[tuple[str, str], dict[str, Stats]] = {}
        for attribute in plan.segments if segments is None else segments:
            path = '$."' + attribute.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for row in self.con.execute(
                f"SELECT coalesce(json_extract_string(segments, $path), $missing) AS value, "
                f"variant, {sums} FROM per_user WHERE day = 'all' GROUP BY ALL ORDER BY ALL",
                {"path": path, "missing": MISSING},
            ).fetchall():
                by_segment.setdefault((attribute, str(row[0])), {})[str(row[1])] = _stats(
                    row[2:], ratio
                )
        overall = by_day.pop("all", {})
        return MetricAggregates(
            experiment=experiment,
            metric=spec.name,
            kind=spec.type,
            aggregation=spec.aggregation or "ratio",
            by_variant=MappingProxyType(overall),
            by_segment=MappingProxyType({k: MappingProxyType(v) for k, v in by_segment.items()}),
            by_day=MappingProxyType({k: MappingProxyType(v) for k, v in by_day.items()}),
        )

    def _days(self, end_ms: int) -> tuple[list[str], list[int]]:
        """UTC days from the first exposure to the last event (or ``end_ms``): label, end."""
        row = self.con.execute(
            "SELECT min(first_ms), greatest(max(first_ms), "
            "(SELECT max(time_ms) FROM outcomes WHERE user_id IN (SELECT user_id FROM users))) "
            "FROM users"
        ).fetchone()
        if row is None or row[0] is None:
            return [], []
        first_day = int(row[0]) // DAY_MS
        last_day = min(int(row[1]), end_ms - 1) // DAY_MS
        days = range(first_day, last_day + 1)
        labels = [
            dt.date.fromordinal(dt.date(1970, 1, 1).toordinal() + d).isoformat() for d in days
        ]
        return labels, [min((d + 1) * DAY_MS, end_ms) for d in days]

    # ---- export ----------------------------------------------------------------------------

    def export_parquet(self, directory: Path) -> dict[str, Path]:
        """``exposures.parquet`` and ``outcomes.parquet`` in ``directory`` (created)."""
        directory.mkdir(parents=True, exist_ok=True)
        written = {}
        for table in ("exposures", "outcomes"):
            path = directory / f"{table}.parquet"
            target = str(path).replace("'", "''")
            self.con.execute(f"COPY {table} TO '{target}' (FORMAT parquet, COMPRESSION zstd)")
            written[table] = path
        return written

    def table_counts(self) -> Mapping[str, int]:
        exposures, outcomes = self._counts()
        return {"exposures": exposures, "outcomes": outcomes}


def _stats(values: Sequence[Any], ratio: bool) -> Stats:
    v = [0.0 if x is None else float(x) for x in values]
    if ratio:
        return RatioStats(int(v[0]), v[1], v[2], v[3], v[4], v[5])
    return MeanStats(int(v[0]), v[1], v[2])


def _exposure_columns(events: Sequence[Exposure]) -> dict[str, list[Any]]:
    import json

    return {
        "experiment": [e.experiment for e in events],
        "user_id": [e.user_id for e in events],
        "variant": [e.variant for e in events],
        "flag": [e.flag for e in events],
        "version": [e.version for e in events],
        "first_ms": [e.time_ms for e in events],
        "segments": [json.dumps(dict(e.segments), separators=(",", ":")) for e in events],
        "split": [e.split for e in events],
    }


def _outcome_columns(events: Sequence[Outcome]) -> dict[str, list[Any]]:
    return {
        "experiment": [e.experiment for e in events],
        "event_id": [e.event_id for e in events],
        "flag": [e.flag for e in events],
        "user_id": [e.user_id for e in events],
        "metric": [e.metric for e in events],
        "value": [e.value for e in events],
        "time_ms": [e.time_ms for e in events],
    }
