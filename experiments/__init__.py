"""Experiments: pure statistics, the decision engine and the report model (no I/O).

``experiments.plan`` is the flag's pre-registered ``experiment`` section; ``experiments.stats``
holds one small module per test over sufficient statistics; ``experiments.decision`` turns the
results into a verdict; ``experiments.report`` assembles every number a report shows.
"""
