"""Experiments: exposures and outcomes recorded by sidecars (``experiments.events``), stored and
aggregated per user in DuckDB (``experiments.store``), and judged by the statistics.

Imports point inward: this package may use ``flags``; ``flags`` never imports it. The sidecar
imports only ``experiments.events`` (recording), never the store (DuckDB stays out of it).
"""
