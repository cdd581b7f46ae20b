"""``flagctl report FLAG [--metric NAME] [--json] [--html FILE]``: ingest, judge, show.

A thin shell: it ingests what is pending (the Redis streams, trimmed once stored, and any
``--events-file``, exactly as ``flagctl experiments ingest``), reads the experiment's data from
the DuckDB store (:func:`experiments.data.experiment_data`), builds the report
(:func:`experiments.report.build_report`, pure) and hands it to a renderer: the terminal summary
(:mod:`experiments.report_text`), ``--json`` (``Report.model_dump(mode="json")``, every number the
summary shows) or the HTML page (:mod:`experiments.report_html`). Bad input is one line and a
non-zero exit: an unknown flag, a flag without an ``experiment`` section, a store without
exposures for it, an undeclared ``--metric``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from redis.exceptions import RedisError
from rich.console import Console

from experiments.cli import db_option, flags_file_option, include_mixed_option
from experiments.data import experiment_data
from experiments.events.sinks import EventKeys
from experiments.ingest import IngestReport, ingest_file, ingest_redis
from experiments.report import Report, build_report
from experiments.report_text import print_report
from experiments.report_view import Header, only_metric
from experiments.store import ExperimentStore
from flags import cli as flags_cli
from flags.experiment_plan import experiment_id
from flags.redis_conn import sync_client, translate
from flags.schema import FlagSpec, entry_document, entry_key, load_flag_file_text, parse_flag


class ReportInputError(ValueError):
    """Nothing to report on, and what to do about it (one line for the user)."""


def load_spec(ctx: flags_cli.Context, flag: str, flags_file: Path | None) -> FlagSpec:
    """The flag from Redis, or from a flags file (the embedded demo has no Redis)."""
    if flags_file is None:
        spec = ctx.admin.get_valid(flag)[1]
    else:
        entries = load_flag_file_text(flags_file.read_text(), filename=flags_file.name)
        found = [e for i, e in enumerate(entries) if entry_key(e, i) == flag]
        if not found:
            raise ReportInputError(f"flag {flag!r} is not in {flags_file}")
        spec = parse_flag(entry_document(found[0]), key=flag)
    if spec.experiment is None:
        raise ReportInputError(
            f"flag {flag!r} has no `experiment` section: declare its metrics and primary metric "
            "(docs/experiments.md) before asking for a report"
        )
    return spec


def ingest_pending(
    ctx: flags_cli.Context, store: ExperimentStore, files: tuple[Path, ...], no_redis: bool
) -> IngestReport:
    """What ``flagctl experiments ingest`` does: Redis streams (then trimmed) and events files."""
    report = IngestReport()
    if not no_redis:
        client = sync_client(ctx.url)
        try:
            ingest_redis(store, client, EventKeys(ctx.keys.prefix), trim=True, report=report)
        except RedisError as exc:  # what was committed stays: the next run resumes
            raise translate(exc, ctx.url) from exc
        finally:
            client.close()
    for path in files:
        ingest_file(store, path, report=report)
    return report


def make_report(
    store: ExperimentStore, spec: FlagSpec, *, now_ms: int, include_mixed: bool = False
) -> Report:
    """The report of ``spec``'s experiment as of ``now_ms``; refuses an experiment without data."""
    assert spec.experiment is not None
    experiment = experiment_id(spec.key, spec.salt, spec.experiment)
    exposures = store.exposure_summary(experiment)
    if not exposures.users and not exposures.mixed_users:
        raise ReportInputError(
            f"no exposures recorded yet for experiment {experiment!r} (flag {spec.key!r}): "
            "serve traffic through a sidecar with events on, then run the report again"
        )
    data = experiment_data(store, spec, now_ms=now_ms, include_mixed=include_mixed)
    return build_report(spec.experiment, data)


@click.command()
@click.argument("flag")
@click.option("--metric", help="Show only this metric's rows (the verdict stays the whole plan's).")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML page here (no network needed to open it).",
)
@db_option
@click.option(
    "--events-file",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also ingest a sidecar's --events-file first (repeatable).",
)
@click.option("--no-redis", is_flag=True, help="Read no Redis: neither events nor the flag.")
@flags_file_option
@include_mixed_option
@flags_cli.json_option
@flags_cli.pass_ctx
def report(
    ctx: flags_cli.Context,
    flag: str,
    metric: str | None,
    html_file: Path | None,
    db: Path,
    files: tuple[Path, ...],
    no_redis: bool,
    flags_file: Path | None,
    include_mixed: bool,
    as_json: bool,
) -> None:
    """The experiment's verdict and evidence: ingests pending events, then judges FLAG."""
    if no_redis and flags_file is None:
        raise click.UsageError("--no-redis needs --flags-file FILE (where else is the flag?)")
    spec = load_spec(ctx, flag, flags_file)
    assert spec.experiment is not None
    if metric is not None and metric not in {m.name for m in spec.experiment.metrics}:
        declared = ", ".join(m.name for m in spec.experiment.metrics)
        raise ReportInputError(f"metric {metric!r} is not declared (declared: {declared})")
    started = time.perf_counter()
    with ExperimentStore(db) as store:
        ingested = ingest_pending(ctx, store, files, no_redis)
        result = only_metric(
            make_report(store, spec, now_ms=time.time_ns() // 1_000_000,
                        include_mixed=include_mixed),
            metric,
        )  # fmt: skip
    header = Header(flag=spec.key, experiment=experiment_id(spec.key, spec.salt, spec.experiment))
    if html_file is not None:
        from experiments.report_html import render_html  # matplotlib: only when a page is asked

        html_file.write_text(render_html(result, header), encoding="utf-8")
    seconds = time.perf_counter() - started
    where = f"; HTML report: {html_file}" if html_file is not None else ""
    status = (
        f"ingested {ingested.read} events ({ingested.exposures_added} new exposures, "
        f"{ingested.outcomes_added} new outcomes); report in {seconds:.2f}s{where}"
    )
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json"), indent=2, sort_keys=True))
        print(status, file=sys.stderr)
        return
    console = Console(highlight=False)  # wraps long reasons (flagctl's own console does not)
    console.print(status, style="dim", markup=False)
    print_report(result, header, console)


def register(cli: click.Group) -> None:
    cli.add_command(report)
