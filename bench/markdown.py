"""Render a results JSON file as Markdown tables (for docs/performance.md).

python -m bench.markdown [bench/results/latest.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.__main__ import DEFAULT_JSON


def cell(summary: dict[str, Any] | None, digits: int) -> str:
    if not summary or summary.get("median") is None:
        return ""
    text = f"{summary['median']:.{digits}f}"
    if summary["n"] > 1:
        text += f" ({summary['min']:.{digits}f}\u2013{summary['max']:.{digits}f})"
    return text


def digits_for(values: list[dict[str, Any]]) -> int:
    medians = [abs(v["median"]) for v in values if v and v.get("median") is not None]
    biggest = max(medians, default=0.0)
    return 0 if biggest >= 100 else 1 if biggest >= 10 else 2 if biggest >= 0.5 else 3


def part_markdown(name: str, part: dict[str, Any]) -> str:
    metrics: dict[str, str] = part["metrics"]
    used = [m for m in metrics if any(m in row for row in part["rows"].values())]
    shown: dict[str, int] = part.get("digits", {})
    lines = [f"### {part['title']} (`{name}`, {part['seconds']:.0f} s)", ""]
    lines.append("| row | " + " | ".join(metrics[m] for m in used) + " |")
    lines.append("|---|" + "---:|" * len(used))
    for row, values in part["rows"].items():
        label = row.strip() if not row.startswith(" ") else f"↳ {row.strip()}"
        cells = []
        for m in used:
            summary = values.get(m)
            cells.append(cell(summary, shown.get(m, digits_for([summary] if summary else []))))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for target in part["targets"]:
        verdict = {True: "**met**", False: "**missed**", None: "n/a"}[target["met"]]
        value = "n/a" if target["value"] is None else f"{target['value']:.3g}"
        lines.append(
            f"- target {target['name']}: {value} {target['op']} {target['limit']:g}"
            f"{target['unit']} → {verdict}"
        )
    for note in part["notes"]:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    head = [
        f"Run {doc['started_at']} ({'--quick' if doc['quick'] else 'full'}), {m['nproc']} CPUs, "
        f"{m['cpu_model']}, Python {m['python']}. Cells: median over rounds (min\u2013max).",
        "",
    ]
    parts = [part_markdown(name, part) for name, part in doc["parts"].items()]
    errors = [f"- part `{k}` failed: {v}" for k, v in doc.get("errors", {}).items()]
    return "\n".join(head + parts + errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    print(render(json.loads(args.path.read_text())))


if __name__ == "__main__":
    main()
