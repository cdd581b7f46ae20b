"""Load and observation for fault tests: a bounded client loop, a health prober, a metrics reader.

:class:`LoadLoop` sends KServe ``ModelInfer`` requests for a fixed set of users from one thread,
each with a deadline, and tallies the outcome of every request by gRPC status name, the cohort
every user was served, the flag revision served, and when the last failure and the first success
after a given moment happened. It is what an app next to the sidecar does during a fault drill;
the numbers are what the drill reports.

:class:`HealthGate` polls ``grpc.health.v1.Health/Check`` the way a load balancer does, and a
:class:`LoadLoop` given a gate sends only while the gate says SERVING.

:func:`scrape` reads the sidecar's Prometheus ``/metrics`` into a flat dict.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from support import ROOT, make_request
from tritonclient.grpc import service_pb2 as kserve
from tritonclient.grpc import service_pb2_grpc

PIXELS = np.load(ROOT / "triton_models" / "digits" / "golden.npz")["pixels"][:1].astype(np.float32)
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def fault_metric(name: str, value: float | int | str) -> None:
    """Print a measured number with a prefix the failure-modes table is collected from."""
    shown = f"{value:.3f}" if isinstance(value, float) else str(value)
    print(f"FAULT-METRIC {name}={shown}", flush=True)


def infer_stub(address: str) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(address)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]


def digits_request() -> kserve.ModelInferRequest:
    return make_request(PIXELS, version="")


@dataclass
class Tally:
    """What a load loop saw. Times are ``time.monotonic()``."""

    statuses: Counter[str] = field(default_factory=Counter)
    variants: dict[str, set[str]] = field(default_factory=dict)
    revisions: dict[int, float] = field(default_factory=dict)  # revision → first served at
    ok_times: list[float] = field(default_factory=list)
    failure_times: list[float] = field(default_factory=list)
    slowest_failure_s: float = 0.0  # how long the slowest failed call took (bounded by deadline?)
    fallbacks: int = 0

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return self.sent - self.statuses["OK"]

    def first_ok_after(self, moment: float) -> float | None:
        return next((t for t in self.ok_times if t >= moment), None)

    def failures_after(self, moment: float) -> int:
        return sum(t >= moment for t in self.failure_times)

    def cohort_changes(self) -> dict[str, set[str]]:
        """Users who were served more than one cohort (a sticky split has none)."""
        return {user: seen for user, seen in self.variants.items() if len(seen) > 1}


class HealthGate:
    """A load balancer's view: polls ``Check`` every ``interval_s`` and remembers the answers."""

    def __init__(self, address: str, *, interval_s: float = 0.05) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = health_pb2_grpc.HealthStub(self._channel)
        self.interval_s = interval_s
        self.serving = threading.Event()
        self.answers: list[tuple[float, str]] = []  # (when, SERVING | NOT_SERVING | error code)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="health-gate")

    def start(self) -> HealthGate:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._channel.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self._stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                answer = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                answer = exc.code().name
            self.answers.append((time.monotonic(), answer))
            if answer == "SERVING":
                self.serving.set()
            else:
                self.serving.clear()
            self._stop.wait(self.interval_s)


class LoadLoop:
    """Sequential requests for ``users`` users, round robin, until stopped (or ``max_requests``).

    ``deadline_s=None`` sends no deadline, so only the sidecar's own deadline bounds a call.
    """

    def __init__(
        self,
        address: str,
        *,
        users: int = 40,
        deadline_s: float | None = 2.0,
        pause_s: float = 0.005,
        max_requests: int = 5000,
        gate: HealthGate | None = None,
    ) -> None:
        self.address = address
        self.users = [f"user-{i}" for i in range(users)]
        self.deadline_s = deadline_s
        self.pause_s = pause_s
        self.max_requests = max_requests
        self.gate = gate
        self.tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="load")

    def start(self) -> LoadLoop:
        self._thread.start()
        return self

    def stop(self) -> Tally:
        self._stop.set()
        if self._thread.ident is None:  # never started
            return self.snapshot()
        # With no client deadline the sidecar's own (--default-timeout-s) must end every call.
        self._thread.join((self.deadline_s or 10.0) + 5)
        assert not self._thread.is_alive(), "load loop did not stop: a request hung"
        return self.snapshot()

    def snapshot(self) -> Tally:
        with self._lock:
            t = self.tally
            return Tally(
                Counter(t.statuses),
                {u: set(v) for u, v in t.variants.items()},
                dict(t.revisions),
                list(t.ok_times),
                list(t.failure_times),
                t.slowest_failure_s,
                t.fallbacks,
            )

    def _run(self) -> None:
        channel, stub = infer_stub(self.address)
        request = digits_request()
        sent = 0
        try:
            while not self._stop.is_set() and sent < self.max_requests:
                if self.gate is not None and not self.gate.serving.is_set():
                    self._stop.wait(0.01)  # the balancer sends this sidecar nothing now
                    continue
                user = self.users[sent % len(self.users)]
                sent += 1
                self._one(stub, request, user)
                self._stop.wait(self.pause_s)
        finally:
            channel.close()

    def _one(self, stub: Any, request: kserve.ModelInferRequest, user: str) -> None:
        started = time.monotonic()
        try:
            reply = stub.ModelInfer(
                request, timeout=self.deadline_s, metadata=(("x-user-id", user),)
            )
        except grpc.RpcError as exc:
            ended = time.monotonic()
            with self._lock:
                self.tally.statuses[exc.code().name] += 1
                self.tally.failure_times.append(ended)
                self.tally.slowest_failure_s = max(self.tally.slowest_failure_s, ended - started)
            return
        params = reply.parameters
        with self._lock:
            self.tally.statuses["OK"] += 1
            self.tally.ok_times.append(time.monotonic())
            self.tally.variants.setdefault(user, set()).add(
                params["trafficsplit.variant"].string_param
            )
            revision = int(params["trafficsplit.flag_revision"].int64_param)
            self.tally.revisions.setdefault(revision, time.monotonic())
            self.tally.fallbacks += bool(params["trafficsplit.fallback"].bool_param)


@contextmanager
def load(address: str, **options: Any) -> Iterator[LoadLoop]:
    """A started :class:`LoadLoop`, stopped however the block ends."""
    loop = LoadLoop(address, **options).start()
    try:
        yield loop
    finally:
        loop.stop()


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``/metrics`` as {(sample name, labels): value}."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in scrape(url).items() if n == name and wanted <= ls)


def wait_for_metric(url: str, name: str, value: float, *, timeout: float, **labels: str) -> float:
    """Seconds until ``metric(url, name, **labels) == value``; fails at the deadline."""
    from servers import wait_until

    started = time.monotonic()
    wait_until(
        lambda: metric(url, name, **labels) == value,
        timeout=timeout,
        interval=0.02,
        what=f"{name}{labels} == {value}",
    )
    return time.monotonic() - started


def labels_of(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> Any:
    return {ls: v for (n, ls), v in samples.items() if n == name}
