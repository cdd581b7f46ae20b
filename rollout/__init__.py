"""Rollouts that run themselves: guardrails, the ramp controller, automatic rollback, shadow
health and the golden-set gate.

Pure at the core (:mod:`rollout.guardrails` judges windows, :mod:`rollout.decide` picks the next
action, :mod:`rollout.state` is the validated state document, :mod:`rollout.golden` and
:mod:`rollout.shadow_gate` judge a candidate before its first step); thin adapters around it (the
Redis state store and leader lease, window reading, webhooks, metrics, the golden runner). Imports
point inward: ``rollout`` uses ``flags``, ``signals`` and the sidecar's engines (the golden gate
runs models directly); nothing imports ``rollout``.
"""
