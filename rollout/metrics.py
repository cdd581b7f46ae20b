"""The controller's Prometheus series (its own registry, served on /metrics by the runner)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rollbacks = Counter(
            "trafficsplit_rollout_rollbacks",
            "Automatic rollbacks, by flag and the guardrail rule that fired first.",
            ["flag", "rule"],
            registry=r,
        )
        self.blocked = Counter(
            "trafficsplit_rollout_blocked",
            "Rollouts a gate blocked before their first step, by flag and gate.",
            ["flag", "gate"],
            registry=r,
        )
        self.steps = Counter(
            "trafficsplit_rollout_steps", "Ramp steps applied, by flag.", ["flag"], registry=r
        )
        self.promotions = Counter(
            "trafficsplit_rollout_promotions", "Rollouts promoted.", ["flag"], registry=r
        )
        self.percent = Gauge(
            "trafficsplit_rollout_candidate_percent",
            "The candidate's share the current step gives it.",
            ["flag"],
            registry=r,
        )
        self.leader = Gauge(
            "trafficsplit_rollout_leader", "1 while this replica holds the lease.", registry=r
        )
        self.errors = Counter(
            "trafficsplit_rollout_tick_errors",
            "Ticks or flags that failed (store down, fenced off, invalid state), by kind.",
            ["kind"],
            registry=r,
        )
        self.tick_seconds = Histogram(
            "trafficsplit_rollout_tick_seconds",
            "Time one controller tick took.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
            registry=r,
        )
