"""Fleet-wide live measurements per model version: what sidecars record, what controllers read.

Pure values (:mod:`signals.model`) and the one latency bucket scheme (:mod:`signals.latency`) at
the core; the Redis writer and reader are thin adapters beside them. Imports point inward:
``signals`` may use ``flags``; ``flags`` never uses ``signals``; the sidecar only records, the
rollout controller only reads.
"""
