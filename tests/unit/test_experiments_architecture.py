"""Imports point inward. The statistics, decision and report are pure: no transport, store or
serving imports. The plan is a leaf (pydantic only, in ``flags.experiment_plan``, re-exported by
``experiments.plan``) so ``flags.schema`` embeds it without ``flags`` importing ``experiments``.
The event path: flags knows nothing of experiments; the sidecar only records (it imports
``experiments.events``, never the DuckDB store, ingestion or the CLI)."""

from __future__ import annotations

from pathlib import Path

from support import ROOT
from test_architecture import imported_modules

IMPURE = ("sidecar", "grpc", "redis", "duckdb", "tritonclient", "opentelemetry", "signals", "flags")
PROJECT = ("experiments", "flags", "sidecar", "signals", "flagctl", "rollout")


# The pure core; adapters (event storage, DuckDB ingestion, CLI) live beside it in the package.
PURE = [
    *(ROOT / "experiments" / "stats").rglob("*.py"),
    *(ROOT / "experiments" / name for name in ("decision.py", "report.py")),
]


def test_experiments_core_imports_nothing_impure() -> None:
    offenders = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in PURE
        for name in imported_modules(path)
        if name.split(".")[0] in IMPURE and name != "experiments.plan"
    }
    assert not offenders, offenders


def test_the_plan_is_a_leaf() -> None:
    names = imported_modules(ROOT / "flags" / "experiment_plan.py")
    assert not {n for n in names if n.split(".")[0] in PROJECT}, names
    assert "pydantic" in names
    assert imported_modules(ROOT / "experiments" / "plan.py") == {"flags.experiment_plan"}


def offenders(package: str, forbidden: tuple[str, ...]) -> set[str]:
    return {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / package).rglob("*.py")
        if "_proto" not in path.parts
        for name in imported_modules(path)
        if name.startswith(forbidden)
    }


def test_flags_never_import_experiments() -> None:
    assert not offenders("flags", ("experiments",))


def test_the_sidecar_only_records() -> None:
    recording_side = ("experiments.store", "experiments.ingest", "experiments.cli", "duckdb")
    assert not offenders("sidecar", recording_side)


def test_the_event_values_and_sinks_know_nothing_of_serving_or_storage() -> None:
    assert not offenders("experiments/events", ("sidecar", "grpc", "duckdb", "experiments.store"))


def test_the_check_sees_imports() -> None:
    assert offenders("experiments", ("duckdb",))  # the store does import it
    assert isinstance(ROOT, Path)
