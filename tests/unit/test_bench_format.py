"""The benchmark suite's output is well formed: a tiny assignment run through the real CLI path.

Only the shape of the table and the JSON is checked here, never a speed: speed is the suite's job
(`make bench`), and timed unit tests would be flaky.
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `bench` is a directory of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

import bench.__main__ as suite  # noqa: E402
from bench.report import Metric, PartReport, Target, percentile, print_part, summarise  # noqa: E402

TINY = {"users": 3_000, "rounds": 1, "growthbook_users": 300}


@pytest.fixture
def tiny_suite(monkeypatch: pytest.MonkeyPatch) -> None:
    module, _, _ = suite.PARTS["assignment"]
    monkeypatch.setitem(suite.PARTS, "assignment", (module, TINY, TINY))


def _check_summary(summary: dict[str, Any]) -> None:
    assert summary["n"] == len(summary["values"]) >= 1
    for key in ("median", "min", "max", "q1", "q3"):
        assert isinstance(summary[key], float) and math.isfinite(summary[key])
    assert summary["min"] <= summary["q1"] <= summary["median"] <= summary["q3"] <= summary["max"]


def test_cli_writes_json_and_prints_a_table(
    tiny_suite: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results" / "bench.json"
    assert suite.main(["--only", "assignment", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Assignment cost" in printed and "trafficsplit evaluate" in printed
    assert "target trafficsplit µs/eval" in printed

    doc = json.loads(out.read_text())
    assert doc["schema"] == 1 and doc["quick"] is False and doc["errors"] == {}
    assert doc["machine"]["nproc"] >= 1
    part = doc["parts"]["assignment"]
    assert part["params"]["users"] == TINY["users"] and part["params"]["rounds"] == 1
    assert set(part["rows"]) == {
        "mmh3.hash (floor)",
        "trafficsplit evaluate",
        "  (same, Subject prebuilt)",
        "GrowthBook() + eval_feature",
        "GrowthBook() + run(Experiment)",
    }
    for metrics in part["rows"].values():
        assert set(metrics) <= set(part["metrics"])
        for summary in metrics.values():
            _check_summary(summary)
    assert part["rows"]["GrowthBook() + eval_feature"]["x_faster_than_gb"]["median"] == 1.0
    assert [t["name"] for t in part["targets"]] == [
        "trafficsplit µs/eval",
        "x faster than GrowthBook",
    ]
    for target in part["targets"]:
        assert target["op"] in ("<=", ">=") and isinstance(target["met"], bool)


def test_a_failing_part_is_reported_and_the_rest_still_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken(name: str, quick: bool) -> Any:
        def run() -> PartReport:
            raise RuntimeError("no nginx here")

        return run

    monkeypatch.setattr(suite, "runner", broken)
    out = tmp_path / "bench.json"
    assert suite.main(["--only", "hop", "--json", str(out), "--quick"]) == 1
    doc = json.loads(out.read_text())
    assert doc["quick"] is True and doc["parts"] == {}
    assert doc["errors"] == {"hop": "RuntimeError: no nginx here"}


def test_table_shows_median_and_spread_and_targets() -> None:
    part = PartReport("demo", "Demo", metrics=[Metric("ms", "ms", 1)])
    for value in (3.0, 1.0, 2.0):
        part.add("row", "ms", value)
    part.target("fast enough", part.median("row", "ms"), "<=", 2.5, " ms")
    console = Console(file=io.StringIO(), width=120, record=True)
    print_part(part, console)
    text = console.export_text()
    assert "2.0 (1.0-3.0)" in text
    assert "target fast enough: 2 <= 2.5 ms -> MET" in text
    with pytest.raises(KeyError):
        part.add("row", "unknown", 1.0)
    with pytest.raises(ValueError):
        part.add("row", "ms", float("nan"))


def test_statistics_helpers() -> None:
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile(list(map(float, range(1, 101))), 99) == 99.0
    assert percentile([7.0], 99) == 7.0
    s = summarise([4.0, 1.0, 3.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["values"]) == (2.5, 1.0, 4.0, [4.0, 1.0, 3.0, 2.0])
    assert summarise([])["median"] is None
    assert Target("t", None, 1.0, "<=").met is None
    assert Target("t", 2.0, 1.0, ">=").met is True
    assert Target("t", float("nan"), 1.0, ">=").to_json()["value"] is None
