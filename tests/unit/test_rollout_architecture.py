"""Imports point inward around rollout: it builds on flags and signals, nothing builds on it."""

from __future__ import annotations

from support import ROOT
from test_architecture import imported_modules

# The golden-set gate runs models directly on the sidecar's engines (Triton, embedded
# onnxruntime): its runner and command are the one adapter that may use serving code.
ENGINE_ADAPTERS = frozenset({"golden_runner.py", "golden_cli.py", "golden_jobs.py"})


def offenders(
    package: str, forbidden: tuple[str, ...], allowed: frozenset[str] = frozenset()
) -> set[str]:
    return {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / package).rglob("*.py")
        if path.name not in allowed
        for name in imported_modules(path)
        if name.split(".")[0] in forbidden
    }


def test_flags_signals_and_the_sidecar_never_import_rollout() -> None:
    found = set().union(*(offenders(p, ("rollout",)) for p in ("flags", "signals", "sidecar")))
    assert not found, found


def test_rollout_never_imports_serving_code() -> None:
    found = offenders(
        "rollout", ("sidecar", "grpc", "tritonclient", "opentelemetry"), ENGINE_ADAPTERS
    )
    assert not found, found
    assert offenders("rollout", ("opentelemetry",)) == set()
