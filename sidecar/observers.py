"""Observers of the request path: hooks before and after each backend call and when a request
settles, in the spirit of OpenFeature hooks.

The router has one code path whatever is observing it. Tracing (:mod:`sidecar.tracing`),
metrics (:mod:`sidecar.metrics`) and logging are observers; the composition root picks them.
With tracing off, :class:`TraceContextPassthrough` forwards the caller's trace context instead of
a CLIENT span's, so the router never branches on tracing.

Hooks run on the request path: keep them to in-memory work (no I/O; a few microseconds).
An observer that raises is logged and skipped; it never fails the request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from flags import Subject
from sidecar.outcome import Assignment, Attempt, RequestOutcome
from sidecar.plan import Hop
from sidecar.telemetry import passthrough_metadata

log = logging.getLogger("sidecar.observers")

Metadata = tuple[tuple[str, str], ...]
IncomingMetadata = Iterable[tuple[str, str | bytes]]


class Exchange:
    """One request in flight, as observers see it. ``span`` and ``attempt_span`` carry the
    tracing observer's spans between its hooks; other observers may ignore them."""

    __slots__ = ("assignment", "attempt_span", "call", "metadata", "model", "response", "rpc",
                 "span", "started", "subject")  # fmt: skip

    def __init__(
        self,
        rpc: str,
        model: str,
        subject: Subject,
        metadata: IncomingMetadata,
        started: float,
    ) -> None:
        self.rpc = rpc
        self.model = model
        self.subject = subject
        self.metadata = metadata
        self.started = started
        self.assignment: Assignment | None = None  # set once planned
        self.call: Any = None  # the BackendCall (sidecar.calls), for observers that resend it
        self.response: Any = None  # the reply that answered the caller, once settled OK
        self.span: object | None = None
        self.attempt_span: object | None = None


class Observer:
    """Base class with no-op hooks; override the ones you need."""

    def on_request(self, exchange: Exchange) -> None:
        """The request was planned (``exchange.assignment`` is set); nothing was sent yet."""

    def before_attempt(self, exchange: Exchange, hop: Hop, backend: str) -> Metadata:
        """A backend call is about to start; return metadata to send with it."""
        return ()

    def after_attempt(
        self, exchange: Exchange, attempt: Attempt, error: BaseException | None
    ) -> None:
        """The backend call ended (``attempt.result`` says how)."""

    def on_settled(self, exchange: Exchange, outcome: RequestOutcome) -> None:
        """The request is settled: answered by some version, or failed with ``outcome.status``."""

    def on_rejected(self, exchange: Exchange, error: Exception) -> None:
        """The request was refused before any plan (no flag, pinning forbidden, shed)."""

    def on_assign(self, exchange: Exchange) -> None:
        """An Assign call: the assignment alone, no inference."""


class Observers(Observer):
    """Fans each hook out to several observers, isolating their failures.

    Each hook only calls the observers that override it (decided once, here): the request path
    pays nothing for hooks an observer leaves as no-ops.
    """

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._observers = tuple(observers)

        def overriding(hook: str) -> tuple[Observer, ...]:
            base = getattr(Observer, hook)
            return tuple(o for o in self._observers if getattr(type(o), hook) is not base)

        self._on_request = overriding("on_request")
        self._before_attempt = overriding("before_attempt")
        self._after_attempt = overriding("after_attempt")
        self._on_settled = overriding("on_settled")
        self._on_rejected = overriding("on_rejected")
        self._on_assign = overriding("on_assign")

    def on_request(self, exchange: Exchange) -> None:
        for observer in self._on_request:
            try:
                observer.on_request(exchange)
            except Exception:
                log.exception("observer %r failed in on_request", observer)

    def before_attempt(self, exchange: Exchange, hop: Hop, backend: str) -> Metadata:
        metadata: Metadata = ()
        for observer in self._before_attempt:
            try:
                metadata += observer.before_attempt(exchange, hop, backend)
            except Exception:
                log.exception("observer %r failed in before_attempt", observer)
        return metadata

    def after_attempt(
        self, exchange: Exchange, attempt: Attempt, error: BaseException | None
    ) -> None:
        for observer in self._after_attempt:
            try:
                observer.after_attempt(exchange, attempt, error)
            except Exception:
                log.exception("observer %r failed in after_attempt", observer)

    def on_settled(self, exchange: Exchange, outcome: RequestOutcome) -> None:
        for observer in self._on_settled:
            try:
                observer.on_settled(exchange, outcome)
            except Exception:
                log.exception("observer %r failed in on_settled", observer)

    def on_rejected(self, exchange: Exchange, error: Exception) -> None:
        for observer in self._on_rejected:
            try:
                observer.on_rejected(exchange, error)
            except Exception:
                log.exception("observer %r failed in on_rejected", observer)

    def on_assign(self, exchange: Exchange) -> None:
        for observer in self._on_assign:
            try:
                observer.on_assign(exchange)
            except Exception:
                log.exception("observer %r failed in on_assign", observer)


class TraceContextPassthrough(Observer):
    """With tracing off, the caller's ``traceparent``/``tracestate`` reach the backend as sent."""

    def before_attempt(self, exchange: Exchange, hop: Hop, backend: str) -> Metadata:
        return passthrough_metadata(exchange.metadata)


class FallbackLog(Observer):
    """One WARNING per flag, version and cause every ``interval_s`` (with the count in between),
    so a dead candidate at 1,000 req/s does not write 1,000 lines a second."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval_s = interval_s
        self._last: dict[tuple[str, str, str], tuple[float, int]] = {}

    def on_settled(self, exchange: Exchange, outcome: RequestOutcome) -> None:
        a = outcome.assignment
        if a.fallback is None:
            return
        failed = next((t for t in outcome.attempts if t.result != "OK"), None)
        key = (a.flag, a.plan.primary.version, str(a.fallback))
        now = time.monotonic()
        last, suppressed = self._last.get(key, (0.0, 0))
        if now - last < self._interval_s:
            self._last[key] = (last, suppressed + 1)
            return
        self._last[key] = (now, 0)
        log.warning(
            "flag %r: version %s of %r did not answer (%s, %s); default version %s served%s",
            a.flag,
            a.plan.primary.version,
            a.plan.primary.model,
            a.fallback,
            failed.result if failed else "?",
            a.served_version,
            f" ({suppressed} more since the last report)" if suppressed else "",
        )


class RecordingObserver(Observer):
    """Keeps every outcome in memory: for tests and for debugging in a REPL."""

    def __init__(self) -> None:
        self.outcomes: list[RequestOutcome] = []
        self.rejected: list[Exception] = []
        self.assigned: list[Assignment] = []
        self.attempts_started: list[tuple[Hop, str]] = []

    def before_attempt(self, exchange: Exchange, hop: Hop, backend: str) -> Metadata:
        self.attempts_started.append((hop, backend))
        return ()

    def on_settled(self, exchange: Exchange, outcome: RequestOutcome) -> None:
        self.outcomes.append(outcome)

    def on_rejected(self, exchange: Exchange, error: Exception) -> None:
        self.rejected.append(error)

    def on_assign(self, exchange: Exchange) -> None:
        assert exchange.assignment is not None
        self.assigned.append(exchange.assignment)
