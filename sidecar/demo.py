"""``make demo``: the main job on a fresh machine.

Starts ``trafficsplit-sidecar`` (embedded onnxruntime + the bundled flag file unless
``--redis-url``/``--triton-url`` say otherwise), sends the golden digits for a few thousand users
through an unmodified ``tritonclient.grpc`` client, and ``Track``s through the native API whether
each answer was correct (the demo knows every digit's true label) and how long it took. Then it
stops the sidecar, prints per-cohort request counts, accuracy per version and latency, and runs
``flagctl report digits`` the way a user would: the events are ingested (from the sidecar's
``--events-file`` on the embedded defaults, from Redis otherwise), the experiment is judged
against the flag's ``experiment`` plan, the verdict is printed and the HTML report written.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton
from rich.console import Console
from rich.table import Table

from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2 as pb
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2_grpc as pb_grpc
from sidecar.launcher import ROOT, SidecarProcess
from sidecar.resources import default_flags_file, default_model_repository

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


class Tracker:
    """Outcomes through the native API's ``Track``, sent without waiting for each reply (the
    futures are collected at the end), so tracking costs the demo little time."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.TrafficSplitStub(self.channel)  # type: ignore[no-untyped-call]
        self.pending: list[grpc.Future] = []

    def track(self, user: str, metric: str, value: float) -> None:
        request = pb.TrackRequest(flag="digits", user_id=user, metric=metric, value=value)
        self.pending.append(self.stub.Track.future(request, timeout=30))

    def close(self) -> tuple[int, str]:
        """(outcomes accepted, the first refusal's message or "")."""
        accepted, refusal = 0, ""
        for future in self.pending:
            try:
                future.result()
                accepted += 1
            except grpc.RpcError as exc:
                refusal = refusal or f"{exc.code().name}: {exc.details()}"
        self.channel.close()
        return accepted, refusal


def run_traffic(
    address: str, users: int
) -> tuple[dict[str, Cohort], dict[str, list[bool]], tuple[int, str]]:
    golden = np.load(GOLDEN)
    pixels, labels = golden["pixels"].astype(np.float32), golden["labels"]
    client = triton.InferenceServerClient(address)
    tracker = Tracker(address)
    cohorts: dict[str, Cohort] = defaultdict(Cohort)
    by_version: dict[str, list[bool]] = defaultdict(list)
    tensor = triton.InferInput("pixels", [1, 64], "FP32")
    outputs = [triton.InferRequestedOutput("label")]
    for i in range(users):
        sample = i % len(labels)
        tensor.set_data_from_numpy(pixels[sample : sample + 1])
        user = f"user-{i}"
        headers = {"x-user-id": user, "x-attr-tier": "pro" if i % 3 == 0 else "free"}
        started = time.perf_counter()
        result = client.infer("digits", [tensor], outputs=outputs, headers=headers)
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
        tracker.track(user, "correct", float(ok))
        tracker.track(user, "latency_ms", elapsed)
    client.close()
    return cohorts, by_version, tracker.close()


def run_report(args: argparse.Namespace, events_file: Path | None, db: Path, width: int) -> int:
    """``flagctl report digits`` as a user runs it: ingest, judge, print, write the page."""
    command = [sys.executable, "-m", "flagctl"]
    if args.redis_url:
        command += ["--redis-url", args.redis_url, "report", "digits"]
    else:
        command += ["report", "digits", "--no-redis", "--flags-file", str(default_flags_file())]
    if events_file is not None:
        command += ["--events-file", str(events_file)]
    command += ["--db", str(db), "--html", str(args.html)]
    env = {**os.environ, "COLUMNS": str(width)}
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


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
    parser.add_argument(
        "--html", type=Path, default=Path("demo-report.html"), help="where to write the report"
    )
    args = parser.parse_args(argv)
    args.html = args.html.resolve()
    console = Console(width=max(110, Console().width))
    sidecar_args = []
    if args.redis_url:
        sidecar_args += ["--redis-url", args.redis_url]
    if args.triton_url:
        sidecar_args += ["--triton-url", args.triton_url]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "sidecar.log"
        # Without Redis the sidecar appends its exposures and outcomes to a file (batched, off
        # the request path); `flagctl report --events-file` ingests it.
        events_file = None if args.redis_url else Path(tmp) / "events.jsonl"
        if events_file is not None:
            sidecar_args += ["--events-file", str(events_file)]
        started = time.perf_counter()
        with SidecarProcess(sidecar_args, stderr_path=log) as sidecar:
            console.print(
                f"sidecar listening on {sidecar.address} "
                f"(started in {time.perf_counter() - started:.1f}s); sending {args.users} users…"
            )
            cohorts, by_version, (tracked, refusal) = run_traffic(sidecar.address, args.users)
        console.print(
            f"sidecar stopped (SIGTERM, drained, events flushed); {tracked} outcomes tracked"
            + (f" ({refusal})" if refusal else "")
        )
        report(cohorts, by_version, args.users, console)
        console.rule("flagctl report digits")
        code = run_report(args, events_file, Path(tmp) / "experiments.duckdb", console.width)
    if code == 0:
        console.print(f"HTML report: {args.html}")
    return code


if __name__ == "__main__":
    sys.exit(main())
