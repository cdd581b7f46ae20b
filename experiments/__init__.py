"""Experiments: pure statistics, the decision engine and the report model (no I/O), and the event
path that feeds them.

``experiments.plan`` is the flag's pre-registered ``experiment`` section (the model lives in
``flags.experiment_plan``); ``experiments.stats`` holds one small module per test over
sufficient statistics; ``experiments.decision`` turns the results into a verdict;
``experiments.report`` assembles every number a report shows. ``experiments.events`` records
exposures and outcomes (the sidecar imports only that); ``experiments.store`` and
``experiments.ingest`` move them into DuckDB and aggregate them per user; ``experiments.cli`` is
``flagctl track`` and ``flagctl experiments``.

Imports point inward: this package may use ``flags``; ``flags`` never imports it.
"""
