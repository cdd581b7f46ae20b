"""Triton fault drills: an outage fails requests fast with UNAVAILABLE, a stalled connection ends
them at the sidecar's deadline, a missing candidate costs nothing, and traffic resumes after
Triton comes back.

Flags come from the bundled demo flag (20 % of users on digits v2), so no Redis is involved. The
client loop sends no deadline: only the sidecar's own ``--default-timeout-s`` bounds a call, and
a call that hung would stop the loop from stopping (:meth:`LoadLoop.stop` fails the test).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from faultload import LoadLoop, Tally, fault_metric, load, metric, wait_for_metric
from faultproxy import FaultProxy
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import wait_until
from triton_harness import TritonInstall, TritonServer, build_python_backend_repository, free_port

from sidecar.launcher import SidecarProcess

pytestmark = [pytest.mark.triton]

SIDECAR_DEADLINE_S = 1.0
# A failed call may take the deadline plus scheduling noise on a loaded 2-core machine.
FAILURE_BOUND_S = SIDECAR_DEADLINE_S + 0.75
# Triton ready → first OK: the channel's reconnect backoff is capped at 0.5 s and the health
# loop probes every 0.5 s (sidecar/backends/triton.py), so the target is 1 s; the bound adds
# scheduling noise on a loaded 2-core machine.
RESUME_BOUND_S = 1.5
# Each outage lasts at least this long, so reconnect backoff has time to grow.
HOLD_S = 1.0
READY = "trafficsplit_version_ready"
ERRORS = "trafficsplit_grpc_errors_total"


def _statuses_since(before: Tally, after: Tally) -> Counter[str]:
    return after.statuses - before.statuses


def _triton_sidecar(start: Callable[..., SidecarProcess], url: str) -> SidecarProcess:
    return start("--triton-url", url, "--default-timeout-s", str(SIDECAR_DEADLINE_S))


def _health(sidecar: SidecarProcess) -> str:
    with grpc.insecure_channel(sidecar.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=2
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _warm(loop: LoadLoop) -> None:
    wait_until(lambda: loop.snapshot().statuses["OK"] >= 20, timeout=15, what="warm load")


def _outage(
    loop: LoadLoop, name: str, *, fail: Callable[[], None], failures: int = 10
) -> Counter[str]:
    """Cause an outage and hold it (``HOLD_S``, ``failures`` failed requests at least); return
    the statuses seen so far."""
    before = loop.snapshot()
    started = time.monotonic()
    fail()
    wait_until(
        lambda: (
            time.monotonic() - started >= HOLD_S
            and loop.snapshot().failures_after(started) >= failures
        ),
        timeout=20,
        what=f"{failures} failed requests during {name}",
    )
    return _statuses_since(before, loop.snapshot())


def _report_failed(name: str, before: Tally, after: Tally) -> Counter[str]:
    """Requests that failed from the fault to the first OK after recovery, by status."""
    seen = _statuses_since(before, after)
    fault_metric(f"{name}.failed", sum(seen.values()) - seen["OK"])
    return seen


def _resumed_after(loop: LoadLoop, name: str, ready_at: float) -> float:
    first = wait_until(
        lambda: loop.snapshot().first_ok_after(ready_at),
        timeout=RESUME_BOUND_S,
        what=f"first OK after {name}",
    )
    seconds = first - ready_at
    fault_metric(f"{name}.first_ok_after_ready_s", seconds)
    return seconds


def test_triton_unreachable_then_stalled_through_proxy(
    triton_server: TritonServer, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    with FaultProxy(triton_server.grpc_port) as proxy:
        sidecar = _triton_sidecar(start_sidecar, proxy.address)
        with load(sidecar.address, deadline_s=None) as loop:
            _warm(loop)
            start = loop.snapshot()
            down = _outage(loop, "triton_break", fail=proxy.break_)
            wait_for_metric(sidecar.metrics_url, READY, 0, timeout=5, target="digits:1")
            errors = metric(sidecar.metrics_url, ERRORS, status="UNAVAILABLE")
            wait_until(lambda: _health(sidecar) == "NOT_SERVING", timeout=5, what="NOT_SERVING")
            proxy.restore()
            _resumed_after(loop, "triton_break", time.monotonic())
            between = loop.snapshot()
            stalled = _outage(loop, "triton_stall", fail=proxy.stall, failures=3)
            proxy.restore()
            _resumed_after(loop, "triton_stall", time.monotonic())
            deadline_errors = metric(sidecar.metrics_url, ERRORS, status="DEADLINE_EXCEEDED")
            _report_failed("triton_break", start, between)
            _report_failed("triton_stall", between, loop.snapshot())
        tally = loop.snapshot()
    fault_metric("triton_break_stall.slowest_failure_s", tally.slowest_failure_s)
    assert set(down) <= {"OK", "UNAVAILABLE"}, down
    assert errors >= down["UNAVAILABLE"] > 0  # every failure is counted by status
    assert set(stalled) <= {"OK", "DEADLINE_EXCEEDED"}, stalled
    assert stalled["DEADLINE_EXCEEDED"] >= 3
    assert deadline_errors >= stalled["DEADLINE_EXCEEDED"]  # the sidecar ended them itself
    assert tally.slowest_failure_s < FAILURE_BOUND_S, "a request outlived the sidecar's deadline"
    assert not tally.cohort_changes()


def test_triton_killed_and_restarted_on_its_port(
    triton_install: TritonInstall,
    tmp_path: Path,
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    repository = build_python_backend_repository(tmp_path / "repository")
    with TritonServer(repository, install=triton_install, grpc_port=free_port()) as triton:
        sidecar = _triton_sidecar(start_sidecar, triton.grpc_url)
        with load(sidecar.address, deadline_s=None) as loop:
            _warm(loop)
            start = loop.snapshot()
            killed = time.monotonic()
            down = _outage(loop, "triton_kill", fail=triton.kill)
            triton.start()  # returns once the model is ready
            ready = time.monotonic()
            resumed_s = _resumed_after(loop, "triton_kill", ready)
            down = _report_failed("triton_kill", start, loop.snapshot())
            fault_metric("triton_kill.outage_s", ready - killed)
        tally = loop.snapshot()
    fault_metric("triton_kill.slowest_failure_s", tally.slowest_failure_s)
    assert set(down) <= {"OK", "UNAVAILABLE"}, down
    assert tally.slowest_failure_s < FAILURE_BOUND_S
    assert resumed_s < RESUME_BOUND_S


def test_candidate_missing_on_triton_falls_back_without_failures(
    triton_v1_only: TritonServer, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    sidecar = _triton_sidecar(start_sidecar, triton_v1_only.grpc_url)
    wait_for_metric(sidecar.metrics_url, READY, 0, timeout=5, target="digits:2")
    with load(sidecar.address, deadline_s=None, max_requests=120) as loop:
        wait_until(lambda: loop.snapshot().sent >= 120, timeout=30, what="120 requests")
    tally = loop.snapshot()
    fallbacks = metric(sidecar.metrics_url, "trafficsplit_fallbacks_total", cause="not_ready")
    fault_metric("candidate_missing.requests", tally.sent)
    fault_metric("candidate_missing.failed", tally.failed)
    fault_metric("candidate_missing.fallback_not_ready", int(fallbacks))
    assert tally.failed == 0, tally.statuses
    assert tally.fallbacks > 0 and fallbacks == tally.fallbacks  # the candidate cohort's share
    assert metric(sidecar.metrics_url, READY, target="digits:1") == 1
    assert metric(sidecar.metrics_url, READY, target="digits:2") == 0
    assert not tally.cohort_changes()
