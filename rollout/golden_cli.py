"""``flagctl golden FLAG``: run the golden-set gate for a flag, print it, store it in Redis.

Exit codes: 0 the candidate passed, 4 it failed the gate, 1 the gate could not run (one line on
stderr, never a traceback: flagctl's error handling), 2 usage.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from flags.cli import Context, emit, json_option, out, pass_ctx
from flags.redis_conn import sync_client
from rollout.golden import GoldenResult
from rollout.golden_runner import golden_file, load_golden, open_backend, run_on
from rollout.golden_store import store_result
from sidecar.resources import default_model_repository

EXIT_GATE_FAILED = 4


@click.command(name="golden")
@click.argument("flag")
@click.option(
    "--triton-url",
    envvar="TRAFFICSPLIT_TRITON_URL",
    help="Run on Triton's gRPC host:port (default: the embedded onnxruntime engine).",
)
@click.option(
    "--model-repository",
    type=click.Path(path_type=Path, file_okay=False),
    help="Model repository: the embedded engine's models and where a relative "
    "golden file is found (default: the bundled triton_models/).",
)
@click.option(
    "--file",
    "file_",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The golden .npz (default: the flag's golden.file, else <model>/golden.npz).",
)
@click.option("--candidate", help="The variant to judge (default: the ramp's, else the shadow's).")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds per request.")
@click.option("--no-store", is_flag=True, help="Do not write the result to Redis.")
@json_option
@pass_ctx
def golden(
    ctx: Context,
    flag: str,
    triton_url: str | None,
    model_repository: Path | None,
    file_: Path | None,
    candidate: str | None,
    timeout: float,
    no_store: bool,
    as_json: bool,
) -> None:
    """Run FLAG's golden set through its default and candidate versions, directly on the backend;
    pass/fail on the flag's golden.max_accuracy_drop. Stores the result at <prefix>golden:FLAG."""
    stored, spec = ctx.admin.get_valid(flag)
    repository = model_repository or default_model_repository()
    path = golden_file(spec, repository, file_)
    data = load_golden(path, spec.golden.labels if spec.golden else "labels")
    backend, where = open_backend(triton_url, repository)
    now = time.time()
    context = {
        "flag_revision": stored.revision,
        "timestamp": now,
        "at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
    }
    result = asyncio.run(
        run_on(backend, where, spec, data, candidate=candidate, timeout_s=timeout, context=context)
    )
    document = result.to_json()
    if not no_store:
        document["stored_at"] = store_result(sync_client(ctx.url), ctx.keys, result)
    emit(as_json, document, lambda: _print(result))
    if not result.passed:
        sys.exit(EXIT_GATE_FAILED)


def _print(result: GoldenResult) -> None:
    table = Table(title=f"golden set for {escape(result.flag)}: {result.samples} samples")
    for column in ("variant", "version", "accuracy", "errors", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for score in (result.control, result.candidate):
        table.add_row(
            escape(score.variant),
            escape(f"{score.model} v{score.version}"),
            f"{score.accuracy:.4f}",
            str(score.errors),
            "-" if score.p50_ms is None else f"{score.p50_ms:.2f}",
            "-" if score.p99_ms is None else f"{score.p99_ms:.2f}",
        )
    out.print(table)
    out.print(
        f"agreement {result.agreement:.4f}; accuracy drop {result.accuracy_drop:+.4f} "
        f"(allowed {result.max_accuracy_drop})"
    )
    if result.passed:
        out.print("[green]PASS[/green]")
    else:
        out.print("[red]FAIL[/red]")
        for reason in result.reasons:
            out.print(f"  {escape(reason)}")
        for score in (result.control, result.candidate):
            for example in score.error_examples:
                out.print(f"  {escape(score.variant)}: {escape(example)}")


def register(cli: click.Group) -> None:
    cli.add_command(golden)
