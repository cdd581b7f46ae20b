"""``python -m bench [--quick] [--only PART ...] [--json PATH]``: run the suite, print, write JSON.

Every part alternates its baselines and trafficsplit within one run and repeats; ``--quick`` cuts
rounds and counts so the whole suite finishes within 3 minutes on a 2-core machine. A part that
fails is reported (in the JSON's ``errors`` and on stderr) and the others still run; the exit code
is 1 if any part failed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from bench.common import ROOT
from bench.report import PartReport, SuiteReport, machine, print_part

DEFAULT_JSON = ROOT / "bench" / "results" / "latest.json"

# name -> (module, keyword arguments for a full run, for --quick)
PARTS: dict[str, tuple[str, dict[str, object], dict[str, object]]] = {
    "assignment": (
        "bench.assignment",
        {"users": 100_000, "rounds": 5},
        {"users": 100_000, "rounds": 2, "growthbook_users": 20_000},
    ),
    "hop": ("bench.hop", {"rounds": 5}, {"rounds": 2, "quick": True}),
    "handler": ("bench.handler", {"rounds": 5}, {"rounds": 2, "requests": 5_000}),
    "latency": ("bench.latency", {"rounds": 5}, {"rounds": 2, "requests": 500}),
    "propagation": (
        "bench.propagation",
        {"changes": 200, "raw_changes": 20, "watchers": 4, "rounds": 4},
        {"changes": 50, "raw_changes": 4, "watchers": 4, "rounds": 2},
    ),
    "rollback": ("bench.rollback", {"rounds": 5}, {"rounds": 2}),
    "embedded": ("bench.embedded", {"rounds": 5}, {"rounds": 2, "quick": True}),
    "soak": ("bench.soak", {"duration_s": 600.0}, {"duration_s": 20.0}),
    "rollout": ("bench.rollout", {"rounds": 10}, {"rounds": 2}),
    "signals": (
        "bench.signals",
        {"rounds": 5, "calls": 400_000, "seconds": 10},
        {"rounds": 2, "calls": 100_000, "seconds": 3},
    ),
    "experiments-stats": (
        "bench.experiments_stats",
        {"users": 1_000_000, "rounds": 3},
        {"users": 1_000_000, "rounds": 1},
    ),
    "experiments": (
        "bench.experiments",
        {"requests": 200_000, "rounds": 5, "track_calls": 5_000, "ingest_users": 500_000},
        {"requests": 50_000, "rounds": 2, "track_calls": 1_000, "ingest_users": 20_000},
    ),
}


def runner(name: str, quick: bool) -> Callable[[], PartReport]:
    module, full, fast = PARTS[name]
    run = importlib.import_module(module).run
    kwargs = fast if quick else full
    return lambda: run(**kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="Fewer rounds, shorter soak (< 3 min)."
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(PARTS),
        metavar="PART",
        help=f"Run only these parts: {', '.join(PARTS)}.",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help=f"Where to write the numbers (default {DEFAULT_JSON.relative_to(ROOT)}).",
    )
    args = parser.parse_args(argv)
    console = Console(width=max(200, Console().width))
    info = machine()
    console.print(
        f"machine: {info['nproc']} CPUs, {info['cpu_model']}, Python {info['python']}"
        f"{'  (quick)' if args.quick else ''}"
    )
    suite = SuiteReport(quick=args.quick)
    for name in args.only or list(PARTS):
        started = time.monotonic()
        console.print(f"[bold]{name}[/bold] ...")
        try:
            part = runner(name, args.quick)()
        except Exception as exc:
            suite.errors[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            console.print(f"[red]{name} failed: {exc}[/red]")
            continue
        part.seconds = time.monotonic() - started
        suite.parts.append(part)
        print_part(part, console)
        suite.write(args.json)  # after every part, so an interrupted run keeps what it measured
    suite.write(args.json)
    console.print(f"wrote {args.json}")
    return 1 if suite.errors else 0


if __name__ == "__main__":
    sys.exit(main())
