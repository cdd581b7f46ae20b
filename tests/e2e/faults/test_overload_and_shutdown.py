"""Overload and shutdown drills on a real sidecar process (embedded engine, bundled demo flag).

Overload: 64 requests at once against ``--max-in-flight 4`` in front of a slowed backend (the
embedded engine waiting ``--batch-delay-ms`` to batch): the excess is shed with
RESOURCE_EXHAUSTED, nothing else fails, and the sidecar serves normally afterwards.

SIGTERM under load: clients behave like a load balancer (send only while ``Health/Check`` says
SERVING): not one request fails, ``Check`` keeps being answered NOT_SERVING during the drain delay,
and the process exits 0 within drain delay + grace.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable

import grpc
import pytest
from faultload import (
    HealthGate,
    LoadLoop,
    digits_request,
    fault_metric,
    infer_stub,
    metric,
)
from servers import wait_until

from sidecar.launcher import SidecarProcess

CONCURRENCY = 64
MAX_IN_FLIGHT = 4
ROUNDS = 3
DRAIN_DELAY_S = 1.0
GRACE_S = 2.0
# Interpreter teardown, tracer shutdown and process exit on a loaded 2-core machine.
EXIT_SLACK_S = 2.0


def _burst(stub: object, n: int) -> Counter[str]:
    """``n`` requests in flight at once (one channel, ``n`` streams); their statuses."""
    request = digits_request()
    futures = [
        stub.ModelInfer.future(  # type: ignore[attr-defined]
            request, timeout=10, metadata=(("x-user-id", f"burst-{i}"),)
        )
        for i in range(n)
    ]
    seen: Counter[str] = Counter()
    for future in futures:
        try:
            future.result()
        except grpc.RpcError as exc:
            seen[exc.code().name] += 1
        else:
            seen["OK"] += 1
    return seen


def test_overload_is_shed_with_resource_exhausted_and_nothing_else(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    sidecar = start_sidecar("--max-in-flight", str(MAX_IN_FLIGHT), "--batch-delay-ms", "200")
    channel, stub = infer_stub(sidecar.address)
    try:
        seen: Counter[str] = Counter()
        for _ in range(ROUNDS):
            seen += _burst(stub, CONCURRENCY)
        after = stub.ModelInfer(digits_request(), timeout=10, metadata=(("x-user-id", "after"),))
    finally:
        channel.close()
    shed = metric(
        sidecar.metrics_url, "trafficsplit_grpc_errors_total", status="RESOURCE_EXHAUSTED"
    )
    fault_metric("overload.requests", sum(seen.values()))
    fault_metric("overload.ok", seen["OK"])
    fault_metric("overload.resource_exhausted", seen["RESOURCE_EXHAUSTED"])
    assert set(seen) == {"OK", "RESOURCE_EXHAUSTED"}, seen  # no UNKNOWN, INTERNAL, UNAVAILABLE
    assert seen["OK"] >= MAX_IN_FLIGHT * ROUNDS
    assert shed == seen["RESOURCE_EXHAUSTED"]  # every shed request is counted
    assert after.model_name == "digits"
    assert sidecar.proc is not None and sidecar.proc.poll() is None
    assert sidecar.stderr_path is not None
    assert "Traceback" not in sidecar.stderr_path.read_text()


def test_sigterm_under_load_fails_nothing_and_drains(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    sidecar = start_sidecar("--drain-delay-s", str(DRAIN_DELAY_S), "--grace-s", str(GRACE_S))
    proc = sidecar.proc
    assert proc is not None
    gate = HealthGate(sidecar.address).start()
    loops = [LoadLoop(sidecar.address, gate=gate, pause_s=0.0) for _ in range(2)]
    try:
        wait_until(gate.serving.is_set, timeout=10, what="health SERVING")
        for loop in loops:
            loop.start()
        wait_until(
            lambda: all(lp.snapshot().statuses["OK"] >= 20 for lp in loops),
            timeout=10,
            what="warm load",
        )
        terminated = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=DRAIN_DELAY_S + GRACE_S + EXIT_SLACK_S)
        except subprocess.TimeoutExpired:
            pytest.fail("the sidecar did not exit within drain delay + grace")
        exited_s = time.monotonic() - terminated
    finally:
        tallies = [loop.stop() for loop in loops]
        gate.stop()
    # Answers while the listener was still open (a small margin before it closes).
    drain = [a for t, a in gate.answers if terminated < t < terminated + DRAIN_DELAY_S - 0.2]
    after_flip = drain[next((i for i, a in enumerate(drain) if a == "NOT_SERVING"), len(drain)) :]
    failed = sum(t.failed for t in tallies)
    fault_metric("sigterm.requests", sum(t.sent for t in tallies))
    fault_metric("sigterm.failed", failed)
    fault_metric("sigterm.not_serving_answers_during_drain", after_flip.count("NOT_SERVING"))
    fault_metric("sigterm.exit_s", exited_s)
    assert code == 0
    assert failed == 0, [t.statuses for t in tallies]
    assert len(after_flip) >= 5 and set(after_flip) == {"NOT_SERVING"}, drain
    assert exited_s < DRAIN_DELAY_S + GRACE_S + EXIT_SLACK_S
