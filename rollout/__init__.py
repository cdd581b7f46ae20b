"""Rollouts that run themselves: guardrails, the ramp controller, automatic rollback.

Pure at the core (:mod:`rollout.guardrails` judges windows, :mod:`rollout.decide` picks the next
action, :mod:`rollout.state` is the validated state document); thin adapters around it (the
Redis state store and leader lease, window reading, webhooks, metrics). Imports point inward:
``rollout`` uses ``flags`` and ``signals``; neither uses ``rollout``, and the sidecar never does.
"""
