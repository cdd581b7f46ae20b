"""Plain helpers shared by tests (import as ``from support import ...``; conftest is not a module)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def digits_flag(**overrides: Any) -> dict[str, Any]:
    """The demo flag (deploy/flags/digits.json): control = digits v1, candidate = digits v2."""
    doc = json.loads((ROOT / "deploy" / "flags" / "digits.json").read_text())
    doc.update(overrides)
    return doc
