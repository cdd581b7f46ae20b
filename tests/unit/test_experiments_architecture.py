"""The statistics, decision and report are pure: no transport, store or serving imports; the plan
is a leaf (pydantic only) so ``flags.schema`` can embed it without depending on the rest."""

from __future__ import annotations

from support import ROOT
from test_architecture import imported_modules

IMPURE = ("sidecar", "grpc", "redis", "duckdb", "tritonclient", "opentelemetry", "signals", "flags")
PROJECT = ("experiments", "flags", "sidecar", "signals", "flagctl", "rollout")


# The pure core; adapters (event storage, DuckDB ingestion, CLI) may live beside it in the package.
PURE = [
    *(ROOT / "experiments" / "stats").rglob("*.py"),
    *(ROOT / "experiments" / name for name in ("decision.py", "report.py", "plan.py")),
]


def test_experiments_core_imports_nothing_impure() -> None:
    offenders = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in PURE
        for name in imported_modules(path)
        if name.split(".")[0] in IMPURE
    }
    assert not offenders, offenders


def test_the_plan_is_a_leaf() -> None:
    names = imported_modules(ROOT / "experiments" / "plan.py")
    assert not {n for n in names if n.split(".")[0] in PROJECT}, names
    assert "pydantic" in names
