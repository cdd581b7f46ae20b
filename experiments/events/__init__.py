"""The recording half: exposure and outcome events, their validation, and the sinks that carry
them off the request path (Redis streams, a JSONL file, memory). No DuckDB here: the sidecar
imports this package."""
