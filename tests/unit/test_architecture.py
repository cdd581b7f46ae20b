"""Dependencies point inward: the flag core knows nothing of serving, transports or telemetry."""

from __future__ import annotations

import ast
from pathlib import Path

from support import ROOT

FORBIDDEN_IN_FLAGS = ("sidecar", "grpc", "tritonclient", "opentelemetry", "onnxruntime")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_flags_never_imports_serving_code() -> None:
    offenders = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "flags").rglob("*.py")
        for name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN_IN_FLAGS
    }
    assert not offenders, offenders


def test_signals_never_import_serving_code_and_flags_never_import_signals() -> None:
    offenders = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "signals").rglob("*.py")
        for name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN_IN_FLAGS
    } | {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "flags").rglob("*.py")
        for name in imported_modules(path)
        if name.split(".")[0] == "signals"
    }
    assert not offenders, offenders


def test_the_check_sees_imports() -> None:
    assert "sidecar.routing" in imported_modules(ROOT / "sidecar" / "kserve_facade.py")
