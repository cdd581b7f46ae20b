"""The event path's imports point inward: flags knows nothing of experiments; the sidecar only
records (it imports experiments.events, never the DuckDB store, ingestion or the CLI)."""

from __future__ import annotations

import ast
from pathlib import Path

from support import ROOT


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offenders(package: str, forbidden: tuple[str, ...]) -> set[str]:
    return {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / package).rglob("*.py")
        if "_proto" not in path.parts
        for name in imports(path)
        if (name == "duckdb" and "duckdb" in forbidden) or name.startswith(forbidden)
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
