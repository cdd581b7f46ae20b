"""Shadow traffic: a sampled share of a flag's requests is sent again to the shadow variant
after the caller's reply is produced, and the two answers are compared.

An observer (:class:`ShadowObserver`). Its ``on_settled`` runs on the request path and only
decides: a dict lookup for the flag's ``shadow`` section, the skip rules, one random draw, a
per-flag in-flight count; a sampled request becomes a background task. The caller's reply is
already produced when ``on_settled`` runs and the task cannot start before the handler returns it
(the handler does not await between the router's return and its own), so the shadow call never
delays or changes the caller's answer. The task resends the request through the same
:class:`~sidecar.calls.BackendCall` (``call.send(backend, hop, ...)``), decodes both answers (a raw
Triton reply is parsed here, off the request path) and compares them (:mod:`sidecar.answers`).

Rules:

- sampled per request with ``random.random() < percent / 100`` (an injectable ``random.Random``):
  independent of user, request content and arrival pattern, so the mirrored traffic is a fair
  sample of all of the flag's traffic and a periodic client cannot alias with it;
- a sampled request is skipped (and counted) when it failed, when it was pinned (golden sets, debugging: not
  real traffic), and when the version that served it IS the shadow version; a ``ModelStreamInfer``
  stream is never mirrored (reason ``stream``: its messages are not kept for a second send);
- at most ``shadow.max_concurrency`` shadow calls in flight per flag in this sidecar; a sampled
  request beyond that is dropped and counted, never queued;
- a shadow call never touches the router's circuit breaker, retry budget or fallback, and its
  failures are counted under the ``shadow`` group only: it can never roll a served version back.

What is recorded per shadow call: Prometheus series (:class:`ShadowMetrics`) and, when a signal
recorder is given, one attempt in the ``shadow`` group of the fleet windows whose result is
``AGREE`` / ``DISAGREE`` for a compared answer (``incomparable`` counts as ``DISAGREE``) or the
error kind (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ...) for a failed call. Calls cancelled at
shutdown are not recorded: they say nothing about the version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from flags.schema import Shadow
from flags.store import FlagStore
from sidecar.answers import AnswerError, Comparison, Verdict, compare_answers, decode_response
from sidecar.backends.base import BackendError, ErrorKind, InferenceBackend
from sidecar.observers import Exchange, Observer
from sidecar.outcome import STREAM_RPC, RequestOutcome
from sidecar.plan import Hop, Membership
from signals.latency import PROMETHEUS_BUCKETS
from signals.model import Group

log = logging.getLogger("sidecar.shadow")

# Window results of compared shadow calls (the other results are error kinds).
AGREE = "AGREE"
DISAGREE = "DISAGREE"
DROPPED = "dropped"

# Log-spaced from 1e-7 to 1e3: float noise between engines up to a regression's real drift.
DIFF_BUCKETS = tuple(10.0**e for e in range(-7, 4))


class SignalRecorder(Protocol):
    """The fleet-window recorder (:mod:`signals`): in-memory, flushed off the request path."""

    def record(
        self,
        flag: str,
        group: str,
        backend: str,
        model: str,
        version: str,
        result: str,
        seconds: float,
        sent: bool = True,
    ) -> None: ...


class ShadowMetrics:
    """The ``trafficsplit_shadow_*`` series (described in docs/operations.md)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.requests = Counter(
            "trafficsplit_shadow_requests",
            "Shadow calls sent, by flag and shadow target.",
            ("flag", "model", "version"),
            registry=r,
        )
        self.errors = Counter(
            "trafficsplit_shadow_errors",
            "Shadow calls that failed, by error kind (never counted against a served version).",
            ("flag", "model", "version", "kind"),
            registry=r,
        )
        self.comparisons = Counter(
            "trafficsplit_shadow_comparisons",
            "Compared answers: the served version's vs the shadow version's "
            "(verdict: agree | disagree | incomparable).",
            ("flag", "served_version", "shadow_version", "verdict"),
            registry=r,
        )
        self.dropped = Counter(
            "trafficsplit_shadow_dropped",
            "Sampled requests not mirrored because shadow.max_concurrency calls were in flight.",
            ("flag",),
            registry=r,
        )
        self.skipped = Counter(
            "trafficsplit_shadow_skipped",
            "Sampled requests not mirrored (reason: failed | pinned | served_is_shadow | stream).",
            ("flag", "reason"),
            registry=r,
        )
        self.max_abs_diff = Histogram(
            "trafficsplit_shadow_max_abs_diff",
            "Largest absolute difference between the float outputs of the two answers.",
            ("flag", "served_version", "shadow_version"),
            buckets=DIFF_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "trafficsplit_shadow_duration_seconds",
            "Duration of each shadow call, by shadow target (failed calls included).",
            ("flag", "model", "version"),
            buckets=PROMETHEUS_BUCKETS,
            registry=r,
        )


class ShadowObserver(Observer):
    """Mirrors sampled requests to each flag's shadow variant (see the module docstring)."""

    def __init__(
        self,
        store: FlagStore,
        backend: InferenceBackend,
        metrics: ShadowMetrics | None = None,
        *,
        recorder: SignalRecorder | None = None,
        timeout_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._backend = backend
        self.metrics = metrics or ShadowMetrics()
        self._recorder = recorder
        self._timeout_s = timeout_s
        self._random = (rng or random.Random()).random
        self._in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._not_mirrored: dict[tuple[str, str], Any] = {}
        self.metrics.registry.register(_InFlightCollector(self._in_flight))

    def in_flight(self, flag: str) -> int:
        return self._in_flight.get(flag, 0)

    def on_settled(self, exchange: Exchange, outcome: RequestOutcome) -> None:
        assignment = outcome.assignment
        flag = self._store.snapshot.get(assignment.flag) if assignment.flag else None
        if flag is None:
            return
        spec = flag.spec.shadow
        if spec is None or spec.percent <= 0:
            return
        if self._random() * 100.0 >= spec.percent:  # drawn first: the common case stops here
            return None
        target = Hop.of(flag.spec.variants[spec.variant])
        if exchange.rpc == STREAM_RPC:
            return self._count(assignment.flag, "stream")
        if outcome.status != "OK" or exchange.response is None or exchange.call is None:
            return self._count(assignment.flag, "failed")
        if assignment.membership is Membership.PINNED:
            return self._count(assignment.flag, "pinned")
        served = assignment.served
        if served.model == target.model and assignment.served_version == target.version:
            return self._count(assignment.flag, "served_is_shadow")
        in_flight = self._in_flight.get(assignment.flag, 0)
        if in_flight >= spec.max_concurrency:
            return self._count(assignment.flag, DROPPED)
        self._in_flight[assignment.flag] = in_flight + 1
        task = asyncio.get_running_loop().create_task(
            self._mirror(
                assignment.flag,
                spec,
                target,
                exchange.call,
                exchange.response,
                assignment.served_version,
            ),
            name=f"shadow-{assignment.flag}",
        )
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._finished(assignment.flag, done))
        return None

    def _finished(self, flag: str, task: asyncio.Task[None]) -> None:
        # A done callback, not a `finally`: a task cancelled before it ran never runs one.
        self._tasks.discard(task)
        self._in_flight[flag] -= 1

    def _count(self, flag: str, reason: str) -> None:
        """Count a sampled request that was not mirrored (label children cached: a
        ``labels()`` call costs a lock and a tuple)."""
        child = self._not_mirrored.get((flag, reason))
        if child is None:
            metric = self.metrics.dropped.labels(flag) if reason == DROPPED else None
            child = metric or self.metrics.skipped.labels(flag, reason)
            self._not_mirrored[(flag, reason)] = child
        child.inc()

    async def _mirror(
        self, flag: str, spec: Shadow, hop: Hop, call: Any, served: Any, served_version: str
    ) -> None:
        try:
            await self._call_and_compare(flag, spec, hop, call, served, served_version)
        except asyncio.CancelledError:
            raise  # shutdown: not recorded, it says nothing about the version
        except Exception:  # a bug here must never surface anywhere but the log
            log.exception("shadow call for flag %r failed unexpectedly", flag)

    async def _call_and_compare(
        self, flag: str, spec: Shadow, hop: Hop, call: Any, served: Any, served_version: str
    ) -> None:
        m = self.metrics
        backend = self._backend.name
        m.requests.labels(flag, hop.model, hop.version).inc()
        started = time.perf_counter()
        try:
            reply = await call.send(self._backend, hop, self._timeout_s, ())
        except BackendError as exc:
            self._failed(flag, hop, str(exc.kind), time.perf_counter() - started, backend)
            return
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # an adapter bug: still one failed shadow attempt
            log.warning("shadow call for flag %r raised %s: %s", flag, type(exc).__name__, exc)
            self._failed(flag, hop, str(ErrorKind.INTERNAL), time.perf_counter() - started, backend)
            return
        seconds = time.perf_counter() - started
        m.latency.labels(flag, hop.model, hop.version).observe(seconds)
        comparison = self.compare(spec, served, reply)
        shadow_version = _version_of(reply) or hop.version
        m.comparisons.labels(flag, served_version, shadow_version, comparison.verdict).inc()
        if comparison.max_abs_diff is not None:
            m.max_abs_diff.labels(flag, served_version, shadow_version).observe(
                comparison.max_abs_diff
            )
        result = AGREE if comparison.verdict is Verdict.AGREE else DISAGREE
        self._record(flag, backend, hop, result, seconds)

    @staticmethod
    def compare(spec: Shadow, served: Any, shadow: Any) -> Comparison:
        """Compare two replies (messages or serialized bytes) as the flag's shadow section says."""
        try:
            return compare_answers(
                decode_response(served),
                decode_response(shadow),
                mode=spec.compare,
                output=spec.output,
                tolerance=spec.tolerance,
            )
        except AnswerError as exc:
            log.warning("shadow answers not comparable: %s", exc)
            return Comparison(Verdict.INCOMPARABLE, None, str(exc))

    def _failed(self, flag: str, hop: Hop, kind: str, seconds: float, backend: str) -> None:
        self.metrics.errors.labels(flag, hop.model, hop.version, kind).inc()
        self.metrics.latency.labels(flag, hop.model, hop.version).observe(seconds)
        self._record(flag, backend, hop, kind, seconds)

    def _record(self, flag: str, backend: str, hop: Hop, result: str, seconds: float) -> None:
        if self._recorder is None:
            return
        try:
            self._recorder.record(
                flag, Group.SHADOW, backend, hop.model, hop.version, result, seconds
            )
        except Exception:
            log.exception("signal recorder failed for a shadow attempt")

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the shadow calls in flight (tests, graceful stop)."""
        pending = set(self._tasks)
        if not pending:
            return True
        _, still = await asyncio.wait(pending, timeout=timeout)
        return not still

    async def close(self) -> None:
        """Cancel the shadow calls still in flight (at shutdown, before the backend closes)."""
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _version_of(reply: Any) -> str:
    if isinstance(reply, bytes | bytearray):
        return ""  # the raw reply is parsed for comparison only; the hop says the version
    return str(getattr(reply, "model_version", "") or "")


class _InFlightCollector(Collector):
    def __init__(self, in_flight: dict[str, int]) -> None:
        self._in_flight = in_flight

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "trafficsplit_shadow_in_flight",
            "Shadow calls in flight, per flag (bounded by shadow.max_concurrency).",
            labels=["flag"],
        )
        for flag, count in sorted(dict(self._in_flight).items()):  # a scrape runs on a thread
            gauge.add_metric([flag], count)
        yield gauge
