"""``make demo``: the main job on a fresh machine.

Starts ``trafficsplit-sidecar`` (embedded onnxruntime + the bundled flag file unless
``--redis-url``/``--triton-url`` say otherwise), sends the golden digits for a few thousand users
through an unmodified ``tritonclient.grpc`` client, prints per-cohort request counts, accuracy per
version and latency, and stops the sidecar.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
from rich.console import Console
from rich.table import Table

from sidecar.launcher import SidecarProcess
from sidecar.resources import default_model_repository

GOLDEN = default_model_repository() / "digits" / "golden.npz"  # the checkout's or the wheel's


@dataclass
class Cohort:
    versions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    correct: int = 0
    fallbacks: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)


def run_traffic(address: str, users: int) -> tuple[dict[str, Cohort], dict[str, list[bool]]]:
    golden = np.load(GOLDEN)
    pixels, labels = golden["pixels"].astype(np.float32), golden["labels"]
    client = triton.InferenceServerClient(address)
    cohorts: dict[str, Cohort] = defaultdict(Cohort)
    by_version: dict[str, list[bool]] = defaultdict(list)
    tensor = triton.InferInput("pixels", [1, 64], "FP32")
    outputs = [triton.InferRequestedOutput("label")]
    for i in range(users):
        sample = i % len(labels)
        tensor.set_data_from_numpy(pixels[sample : sample + 1])
        started = time.perf_counter()
        result = client.infer(
            "digits", [tensor], outputs=outputs, headers={"x-user-id": f"user-{i}"}
        )
        elapsed = (time.perf_counter() - started) * 1000
        response = result.get_response()
        variant = response.parameters["trafficsplit.variant"].string_param
        ok = bool(result.as_numpy("label").ravel()[0] == labels[sample])
        cohort = cohorts[variant]
        cohort.versions[response.model_version] += 1
        cohort.correct += ok
        cohort.fallbacks += response.parameters["trafficsplit.fallback"].bool_param
        cohort.latencies_ms.append(elapsed)
        by_version[response.model_version].append(ok)
    client.close()
    return cohorts, by_version


def report(
    cohorts: dict[str, Cohort], by_version: dict[str, list[bool]], users: int, console: Console
) -> None:
    table = Table(
        title=f"trafficsplit demo: {users} users through the sidecar (tritonclient, KServe-v2)"
    )
    for column in (
        "cohort",
        "requests",
        "share",
        "served by",
        "accuracy",
        "p50 ms",
        "p99 ms",
        "fallbacks",
    ):
        table.add_column(column, justify="left" if column in ("cohort", "served by") else "right")
    for name in sorted(cohorts):
        c = cohorts[name]
        lat = sorted(c.latencies_ms)
        table.add_row(
            name,
            str(c.requests),
            f"{c.requests / users:.1%}",
            ", ".join(f"v{v}: {n}" for v, n in sorted(c.versions.items())),
            f"{c.correct / c.requests:.3f}",
            f"{statistics.median(lat):.2f}",
            f"{lat[min(len(lat) - 1, int(0.99 * len(lat)))]:.2f}",
            str(c.fallbacks),
        )
    console.print(table)
    versions = Table(title="accuracy per model version (golden set)")
    for column in ("version", "requests", "accuracy"):
        versions.add_column(column, justify="right")
    for version in sorted(by_version):
        hits = by_version[version]
        versions.add_row(f"digits v{version}", str(len(hits)), f"{sum(hits) / len(hits):.3f}")
    console.print(versions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--redis-url", help="flags from Redis instead of deploy/flags/digits.json")
    parser.add_argument(
        "--triton-url", help="a Triton gRPC host:port instead of embedded onnxruntime"
    )
    args = parser.parse_args(argv)
    console = Console(width=max(110, Console().width))
    sidecar_args = []
    if args.redis_url:
        sidecar_args += ["--redis-url", args.redis_url]
    if args.triton_url:
        sidecar_args += ["--triton-url", args.triton_url]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "sidecar.log"
        started = time.perf_counter()
        with SidecarProcess(sidecar_args, stderr_path=log) as sidecar:
            console.print(
                f"sidecar listening on {sidecar.address} "
                f"(started in {time.perf_counter() - started:.1f}s); sending {args.users} users…"
            )
            cohorts, by_version = run_traffic(sidecar.address, args.users)
        console.print("sidecar stopped (SIGTERM, drained)")
    report(cohorts, by_version, args.users, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
