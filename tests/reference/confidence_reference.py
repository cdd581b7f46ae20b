"""Run inside .venv-confidence: spotify-confidence's ZTest on JSON aggregates from stdin.

Kept free of project imports (another interpreter, other packages). Prints per-case absolute
differences with their CI and p-value, and the seconds per repeat.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import pandas as pd
import spotify_confidence as confidence


def run(case: dict) -> dict:
    frame = pd.DataFrame(
        {
            "variant": ["control", "treatment"],
            "sum": [case["a"]["sum"], case["b"]["sum"]],
            "sum_sq": [case["a"]["sum_sq"], case["b"]["sum_sq"]],
            "n": [case["a"]["n"], case["b"]["n"]],
        }
    )
    test = confidence.ZTest(
        frame,
        numerator_column="sum",
        numerator_sum_squares_column="sum_sq",
        denominator_column="n",
        categorical_group_columns="variant",
        interval_size=1 - case["alpha"],
    )
    row = test.difference(level_1="control", level_2="treatment", absolute=True).iloc[0]
    return {
        "difference": float(row["difference"]),
        "ci": [float(row["ci_lower"]), float(row["ci_upper"])],
        "p_value": float(row["p-value"]),
    }


def main() -> None:
    warnings.simplefilter("ignore")
    request = json.load(sys.stdin)
    repeats = request.get("repeats", 1)
    started = time.perf_counter()
    for _ in range(repeats):
        answers = [run(case) for case in request["cases"]]
    json.dump({"cases": answers, "seconds": (time.perf_counter() - started) / repeats}, sys.stdout)


if __name__ == "__main__":
    main()
