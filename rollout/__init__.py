"""Rollouts: the controller, guardrails, shadow health and the golden-set gate.

Reads fleet measurements (:mod:`signals`) and flags (:mod:`flags`), decides with pure functions,
and writes decisions through the flags' audited compare-and-set path. May use ``flags``,
``signals`` and the sidecar's engines (the golden gate runs models directly); nothing imports it.
"""
