"""Run inside .venv-gbstats (gbstats pins numpy<2): JSON cases on stdin, gbstats' numbers on stdout.

Kept free of project imports: it runs under another interpreter with other packages.
"""

from __future__ import annotations

import json
import sys
import time

from gbstats.frequentist.tests import (
    FrequentistConfig,
    SequentialConfig,
    SequentialTwoSidedTTest,
    TwoSidedTTest,
)
from gbstats.models.statistics import ProportionStatistic, RatioStatistic, SampleMeanStatistic
from gbstats.utils import check_srm


def statistic(kind, s):
    if kind == "binary":
        return ProportionStatistic(n=s["n"], sum=s["sum"])
    if kind == "continuous":
        return SampleMeanStatistic(n=s["n"], sum=s["sum"], sum_squares=s["sum_sq"])
    return RatioStatistic(
        n=s["n"],
        m_statistic=SampleMeanStatistic(n=s["n"], sum=s["num_sum"], sum_squares=s["num_sum_sq"]),
        d_statistic=SampleMeanStatistic(n=s["n"], sum=s["den_sum"], sum_squares=s["den_sum_sq"]),
        m_d_sum_of_products=s["cross"],
    )


def result(r):
    return {"expected": r.expected, "ci": list(r.ci), "p_value": r.p_value, "sd": r.uplift.stddev}


def run(case):
    a, b = statistic(case["type"], case["a"]), statistic(case["type"], case["b"])
    out = {}
    for diff in ("absolute", "relative"):
        fixed = TwoSidedTTest(a, b, FrequentistConfig(alpha=case["alpha"], difference_type=diff))
        seq = SequentialTwoSidedTTest(
            a,
            b,
            SequentialConfig(
                alpha=case["alpha"],
                difference_type=diff,
                sequential_tuning_parameter=case["tuning"],
            ),
        )
        out[diff] = {
            "fixed": result(fixed.compute_result()),
            "sequential": result(seq.compute_result()),
        }
    return out


def main():
    request = json.load(sys.stdin)
    started = time.perf_counter()
    repeats = request.get("repeats", 1)
    for _ in range(repeats):
        answers = [run(case) for case in request["cases"]]
        srm = [check_srm(p["users"], p["weights"]) for p in request.get("srm", [])]
    seconds = (time.perf_counter() - started) / repeats
    json.dump({"cases": answers, "srm": srm, "seconds": seconds}, sys.stdout)


if __name__ == "__main__":
    main()
