"""flagd's own ``fractional``, run on JSON cases: stdin in, the variants flagd picks out.

Runs under two interpreters: the project's venv has openfeature-flagd-core 2.x (fractional v3,
CBOR), .venv-flagd-legacy has 1.0.0 (the string ``flagKey + targetingKey``); both ship the same
module path, so they cannot share one venv. Kept free of project imports for that reason.

Input: ``{"cases": [{"flag_key": str, "targeting": {...}, "keys": [str, ...]}]}``.
Output: ``{"core": version, "variants": [[variant or null per key] per case]}``.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from typing import Any

from openfeature.contrib.tools.flagd.core.targeting.targeting import targeting
from openfeature.evaluation_context import EvaluationContext


def run(request: dict[str, Any]) -> dict[str, Any]:
    variants = [
        [
            targeting(case["flag_key"], case["targeting"], EvaluationContext(targeting_key=key))
            for key in case["keys"]
        ]
        for case in request["cases"]
    ]
    return {"core": version("openfeature-flagd-core"), "variants": variants}


if __name__ == "__main__":
    json.dump(run(json.load(sys.stdin)), sys.stdout)
