"""``flagctl track`` and ``flagctl experiments ...``: outcomes in, events ingested, data out.

``track`` validates against the flags in Redis exactly as the sidecar's ``Track`` RPC does
(:mod:`experiments.events.validate`) and writes straight to the outcomes stream (durable once it
returns). ``track --file`` validates every line first and writes nothing if one is bad, naming
each bad line. ``experiments ingest`` moves events from Redis (and events files) into the DuckDB
store and trims what it ingested; ``experiments summary`` shows what the store holds;
``experiments export --parquet DIR`` writes Parquet for a warehouse.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from redis.exceptions import RedisError

from experiments.aggregates import Stats
from experiments.events.model import FIELD, Outcome
from experiments.events.sinks import DEFAULT_STREAM_MAX_LEN, EventKeys
from experiments.events.validate import InvalidEvent, outcome_from
from experiments.ingest import IngestReport, ingest_file, ingest_redis
from experiments.stats.summary import RatioStats
from experiments.store import ExperimentStore
from flags import cli as flags_cli
from flags.experiment_plan import experiment_id
from flags.redis_conn import sync_client, translate
from flags.schema import FlagSpec, entry_key, load_flag_file_text, parse_flag

DEFAULT_DB = "trafficsplit-experiments.duckdb"
MAX_BAD_LINES_SHOWN = 20
WRITE_BATCH = 5_000


class TrackInputError(ValueError):
    """Bad outcomes given to ``flagctl track``: the message names each bad line."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _flags(ctx: flags_cli.Context) -> dict[str, FlagSpec]:
    return {f.key: f.spec for f in ctx.admin.list_flags() if f.spec is not None}


def _time_ms(value: Any) -> int:
    """``time`` of a JSONL line: Unix milliseconds, or an ISO-8601 string with a zone."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise InvalidEvent("`time` must be Unix milliseconds or an ISO-8601 string")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value != int(value):
            raise InvalidEvent("`time` must be whole Unix milliseconds")
        return int(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidEvent(f"`time` {value!r} is not ISO-8601 (or Unix ms)") from exc
        if parsed.tzinfo is None:
            raise InvalidEvent(f"`time` {value!r} needs a zone (e.g. 2026-01-31T12:00:00Z)")
        return int(parsed.timestamp() * 1000)
    raise InvalidEvent("`time` must be Unix milliseconds or an ISO-8601 string")


def parse_line(data: Any, flags: Mapping[str, FlagSpec], now_ms: int) -> Outcome:
    """One JSONL object → a validated outcome (pure). Without ``id``, a line with a ``time`` gets
    an id derived from its content, so importing the same file twice counts it once."""
    if not isinstance(data, dict):
        raise InvalidEvent("expected a JSON object with flag, user_id, metric, value")
    unknown = set(data) - {"flag", "user_id", "metric", "value", "time", "id"}
    if unknown:
        raise InvalidEvent(f"unknown field(s) {', '.join(sorted(unknown))}")
    for name in ("flag", "user_id", "metric"):
        if not isinstance(data.get(name), str):
            raise InvalidEvent(f"`{name}` is required (a string)")
    value = data.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent("`value` is required (a finite number)")
    key = data.get("id", "")
    if not isinstance(key, str | int) or isinstance(key, bool):
        raise InvalidEvent("`id` must be a string")
    time_ms = _time_ms(data.get("time"))
    if not key and time_ms:
        content = json.dumps([data["flag"], data["user_id"], data["metric"], value, time_ms])
        key = "h:" + hashlib.sha1(content.encode()).hexdigest()[:24]
    return outcome_from(
        flags,
        flag=data["flag"],
        user_id=data["user_id"],
        metric=data["metric"],
        value=float(value),
        time_ms=time_ms,
        idempotency_key=str(key),
        now_ms=now_ms,
    )


def read_events_file(path: Path, flags: Mapping[str, FlagSpec], now_ms: int) -> list[Outcome]:
    """Every line validated; raises TrackInputError naming the bad lines (nothing accepted)."""
    outcomes: list[Outcome] = []
    bad: list[str] = []
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append(f"line {number}: not JSON ({exc.msg}, column {exc.colno})")
                continue
            try:
                outcomes.append(parse_line(data, flags, now_ms))
            except InvalidEvent as exc:
                bad.append(f"line {number}: {exc}")
    if bad:
        shown = bad[:MAX_BAD_LINES_SHOWN]
        more = f"\n  ... and {len(bad) - len(shown)} more" if len(bad) > len(shown) else ""
        raise TrackInputError(
            f"{path}: {len(bad)} bad line(s), nothing imported; fix them and run again:\n  "
            + "\n  ".join(shown)
            + more
        )
    return outcomes


def _write(ctx: flags_cli.Context, outcomes: list[Outcome]) -> None:
    client = sync_client(ctx.url)
    stream = EventKeys(ctx.keys.prefix).outcomes
    try:
        for start in range(0, len(outcomes), WRITE_BATCH):
            pipe = client.pipeline(transaction=False)
            for o in outcomes[start : start + WRITE_BATCH]:
                pipe.xadd(stream, {FIELD: o.encode()}, maxlen=DEFAULT_STREAM_MAX_LEN,
                          approximate=True)  # fmt: skip
            pipe.execute()
    except RedisError as exc:
        raise translate(exc, ctx.url) from exc
    finally:
        client.close()


@click.command()
@click.argument("flag", required=False)
@click.argument("user_id", required=False)
@click.argument("metric", required=False)
@click.argument("value", required=False, type=float)
@click.option("--time", "time_ms", type=int, default=0, help="Unix milliseconds (default: now).")
@click.option("--id", "event_id", default="", help="Idempotency key: a repeat is counted once.")
@click.option(
    "--file",
    "events_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Import JSONL outcomes: one {flag, user_id, metric, value, time?, id?} per line.",
)
@flags_cli.json_option
@flags_cli.pass_ctx
def track(
    ctx: flags_cli.Context,
    flag: str | None,
    user_id: str | None,
    metric: str | None,
    value: float | None,
    time_ms: int,
    event_id: str,
    events_file: Path | None,
    as_json: bool,
) -> None:
    """Record an outcome: FLAG USER_ID METRIC VALUE, or many with --file."""
    now = _now_ms()
    if events_file is not None:
        if flag is not None:
            raise click.UsageError("give either FLAG USER_ID METRIC VALUE or --file, not both")
        outcomes = read_events_file(events_file, _flags(ctx), now)
    else:
        if flag is None or user_id is None or metric is None or value is None:
            raise click.UsageError("track needs FLAG USER_ID METRIC VALUE (or --file FILE)")
        try:
            outcomes = [
                outcome_from(
                    _flags(ctx),
                    flag=flag,
                    user_id=user_id,
                    metric=metric,
                    value=value,
                    time_ms=time_ms,
                    idempotency_key=event_id,
                    now_ms=now,
                )
            ]
        except InvalidEvent as exc:
            raise TrackInputError(str(exc)) from exc
    _write(ctx, outcomes)
    flags_cli.emit(
        as_json,
        {"tracked": len(outcomes), "event_ids": [o.event_id for o in outcomes[:100]]},
        lambda: flags_cli.out.print(f"tracked {len(outcomes)} outcome(s)", markup=False),
    )


@click.group()
def experiments() -> None:
    """Experiment events: ingest into DuckDB, summarise, export."""


db_option = click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TRAFFICSPLIT_EXPERIMENTS_DB",
    default=DEFAULT_DB,
    show_default=True,
    help="The DuckDB file (env TRAFFICSPLIT_EXPERIMENTS_DB).",
)

flags_file_option = click.option(
    "--flags-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the flag from this file instead of Redis (the embedded demo).",
)
include_mixed_option = click.option(
    "--include-mixed", is_flag=True, help="Keep users exposed to several variants."
)


@experiments.command()
@db_option
@click.option(
    "--events-file",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also ingest a sidecar's --events-file (repeatable).",
)
@click.option("--no-redis", is_flag=True, help="Ingest only the files, not the Redis streams.")
@click.option("--no-trim", is_flag=True, help="Leave ingested entries in the Redis streams.")
@flags_cli.json_option
@flags_cli.pass_ctx
def ingest(
    ctx: flags_cli.Context,
    db: Path,
    files: tuple[Path, ...],
    no_redis: bool,
    no_trim: bool,
    as_json: bool,
) -> None:
    """Move events from Redis (and files) into the store; idempotent, then trims Redis."""
    report = IngestReport()
    started = time.perf_counter()
    with ExperimentStore(db) as store:
        if not no_redis:
            client = sync_client(ctx.url)
            try:
                ingest_redis(store, client, EventKeys(ctx.keys.prefix), trim=not no_trim,
                             report=report)  # fmt: skip
            except RedisError as exc:  # what was committed before stays: ingestion resumes
                raise translate(exc, ctx.url) from exc
            finally:
                client.close()
        for path in files:
            ingest_file(store, path, report=report)
    seconds = time.perf_counter() - started
    payload = {**report.to_json(), "seconds": round(seconds, 3), "db": str(db)}
    flags_cli.emit(
        as_json,
        payload,
        lambda: flags_cli.out.print(
            f"ingested {report.read} events in {seconds:.2f}s: {report.exposures_added} new "
            f"exposures, {report.outcomes_added} new outcomes, {report.malformed} malformed, "
            f"{report.trimmed} trimmed from Redis ({db})",
            markup=False,
        ),
    )


def _load_spec(ctx: flags_cli.Context, flag: str, flags_file: Path | None) -> FlagSpec:
    if flags_file is None:
        return ctx.admin.get_valid(flag)[1]
    entries = load_flag_file_text(flags_file.read_text(), filename=flags_file.name)
    for i, entry in enumerate(entries):
        if entry_key(entry, i) == flag:
            return parse_flag(entry, key=flag)
    raise TrackInputError(f"flag {flag!r} is not in {flags_file}")


def _stats_json(stats: Stats) -> dict[str, Any]:
    if isinstance(stats, RatioStats):
        ratio = stats.num_sum / stats.den_sum if stats.den_sum else None
        return {"n": stats.n, "ratio": ratio, "num_sum": stats.num_sum,
                "den_sum": stats.den_sum}  # fmt: skip
    return {"n": stats.n, "mean": stats.mean, "sum": stats.sum, "sum_sq": stats.sum_sq}


@experiments.command()
@click.argument("flag")
@db_option
@flags_file_option
@include_mixed_option
@flags_cli.json_option
@flags_cli.pass_ctx
def summary(
    ctx: flags_cli.Context,
    flag: str,
    db: Path,
    flags_file: Path | None,
    include_mixed: bool,
    as_json: bool,
) -> None:
    """Users per variant and each metric's per-variant aggregates, as stored (no statistics)."""
    spec = _load_spec(ctx, flag, flags_file)
    if spec.experiment is None:
        raise TrackInputError(f"flag {flag!r} has no `experiment` section")
    experiment = experiment_id(spec.key, spec.salt, spec.experiment)
    if not db.exists():
        raise TrackInputError(f"{db}: no such store; run `flagctl experiments ingest` first")
    with ExperimentStore(db) as store:
        exposures = store.exposure_summary(experiment)
        plan = spec.experiment
        metrics = {
            m.name: store.metric(experiment, plan, m.name, segments=(), include_mixed=include_mixed)
            for m in plan.metrics
        }
    per_metric = {
        name: {v: _stats_json(s) for v, s in agg.by_variant.items()}
        for name, agg in metrics.items()
    }
    payload = {
        "experiment": experiment,
        "users": dict(exposures.users),
        "mixed_users": exposures.mixed_users,
        "mixed_by_variants": dict(exposures.mixed_by_variants),
        "metrics": per_metric,
    }

    def human() -> None:
        out = flags_cli.out
        out.print(f"experiment {experiment}: users {dict(exposures.users)}, "
                  f"mixed {exposures.mixed_users} (excluded)", markup=False)  # fmt: skip
        for name, per_variant in per_metric.items():
            out.print(f"  {name}: {json.dumps(per_variant, sort_keys=True)}", markup=False)

    flags_cli.emit(as_json, payload, human)


@experiments.command()
@db_option
@click.option(
    "--parquet",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Write exposures.parquet and outcomes.parquet here.",
)
@flags_cli.json_option
def export(db: Path, directory: Path, as_json: bool) -> None:
    """Export the store as Parquet (for a warehouse)."""
    if not db.exists():
        raise TrackInputError(f"{db}: no such store; run `flagctl experiments ingest` first")
    with ExperimentStore(db) as store:
        written = store.export_parquet(directory)
        counts = store.table_counts()
    flags_cli.emit(
        as_json,
        {"files": {k: str(v) for k, v in written.items()}, "rows": dict(counts)},
        lambda: flags_cli.out.print(
            ", ".join(f"{counts[k]} rows → {v}" for k, v in written.items()), markup=False
        ),
    )


def register(cli: click.Group) -> None:
    cli.add_command(track)
    cli.add_command(experiments)
