"""The Python snippets in README.md and docs/api.md run as written against a live sidecar."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT

from sidecar.launcher import SidecarProcess

DOCUMENTED_ADDRESS = "127.0.0.1:8500"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


SNIPPETS = [
    pytest.param(code, id=f"{doc}#{i}")
    for doc in ("README.md", "docs/api.md")
    for i, code in enumerate(python_blocks(ROOT / doc))
    if "InProcessClient" not in code  # no sidecar: test_inproc_snippets.py runs those
]


def test_the_docs_have_snippets() -> None:
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("code", SNIPPETS)
def test_snippet_runs(code: str, tmp_path: Path) -> None:
    assert DOCUMENTED_ADDRESS in code
    with SidecarProcess([], stderr_path=tmp_path / "sidecar.log") as sidecar:
        script = code.replace(DOCUMENTED_ADDRESS, sidecar.address)
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 0, result.stderr
    assert re.search(r"\b(control|candidate)\b", result.stdout)
