"""Sidecar configuration: one frozen object, parsed once at start-up.

Each setting is declared once, as a field of :class:`Settings` whose metadata holds its help
text; the command-line option (``--field-name``) and the environment variable
(``TRAFFICSPLIT_FIELD_NAME``) are derived from it. Precedence: argument > environment > default.
Nothing reads the environment anywhere else (OpenTelemetry's standard ``OTEL_*`` variables
excepted: its SDK reads them).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flags.redis_keys import DEFAULT_PREFIX
from sidecar.resources import default_flags_file, default_model_repository

MIB = 1024 * 1024
ENV_PREFIX = "TRAFFICSPLIT_"


def _setting(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = _setting("127.0.0.1:8500", "host:port to serve on (loopback unless you say so)")
    metrics_listen: str = _setting("", "host:port serving Prometheus /metrics (off when unset)")
    redis_url: str | None = _setting(
        None, "flags from Redis (redis://, rediss://, redis+sentinel://)"
    )
    redis_prefix: str = _setting(DEFAULT_PREFIX, "Redis key prefix")
    flags_file: Path = _setting(
        default_flags_file(),
        "flags from this JSON/YAML file when no Redis (default: the bundled demo flag)",
    )
    bootstrap_flags: Path | None = _setting(
        None,
        "flags served until Redis answers (a JSON/YAML file in the --flags-file format); Redis "
        "replaces them once reachable",
    )
    snapshot_file: Path | None = _setting(None, "save/restore the last good flags here")
    stable: tuple[str, ...] = _setting(
        (),
        "MODEL=VERSION: serve this version of a model that has no flag (repeatable; the "
        "environment variable takes a comma-separated list)",
        repeatable=True,
    )
    unflagged: str = _setting(
        "refuse",
        "a request for a model with no flag and no --stable version: 'refuse' it "
        "(FAILED_PRECONDITION), or 'passthrough' (the backend picks the version: its newest)",
        choices=("refuse", "passthrough"),
    )
    triton_url: str | None = _setting(None, "Triton gRPC host:port; embedded onnxruntime if unset")
    backend: tuple[str, ...] = _setting(
        (),
        "NAME=HOST:PORT: a named Triton backend that flag targets may route to with "
        '"backend": "NAME" (repeatable; the environment variable takes a comma-separated list)',
        repeatable=True,
    )
    model_repository: Path = _setting(
        default_model_repository(),
        "model repository for the embedded engine (default: the bundled digits models)",
    )
    batch_delay_ms: float = _setting(0.0, "embedded engine: wait this long to batch requests")
    user_id_header: str = _setting("x-user-id", "metadata key carrying the user id")
    attribute_prefix: str = _setting("x-attr-", "metadata prefix of subject attributes")
    allow_anonymous: bool = _setting(
        False, "serve the default variant to requests without a user id"
    )
    trace_user_id: bool = _setting(False, "put raw user ids on spans (off: privacy)")
    max_message_bytes: int = _setting(64 * MIB, "largest request/response")
    max_user_id_length: int = _setting(256, "longest user id accepted")
    max_attributes: int = _setting(64, "most subject attributes accepted")
    max_attribute_length: int = _setting(1024, "longest attribute value accepted")
    default_timeout_s: float = _setting(30.0, "deadline when the caller sets none")
    attempt_share: float = _setting(
        0.5,
        "share of the remaining deadline a non-default version may use before its users fall "
        "back to the default version",
    )
    retry_budget_ratio: float = _setting(0.1, "fallback retries allowed per request")
    retry_budget_min_per_s: float = _setting(10.0, "fallback retries allowed per second anyway")
    breaker_threshold: int = _setting(5, "consecutive failures that open a version's circuit")
    breaker_cool_down_s: float = _setting(5.0, "how long a circuit stays open before a probe")
    breaker_max_open_s: float = _setting(60.0, "longest open time after failed probes")
    readiness_interval_s: float = _setting(
        0.5, "how often to check that every flagged model version is ready on the backend"
    )
    require_default_ready: bool = _setting(
        False, "report NOT_SERVING while a flag's default version is not ready on the backend"
    )
    max_in_flight: int = _setting(
        1024, "concurrent inference requests; more are shed with RESOURCE_EXHAUSTED (0: no limit)"
    )
    drain_delay_s: float = _setting(
        5.0,
        "on SIGTERM, keep serving this long after health turns NOT_SERVING, so load balancers "
        "stop sending before the listener closes",
    )
    grace_s: float = _setting(5.0, "then wait this long for in-flight requests to finish")
    events: str = _setting(
        "auto",
        "record exposures and accept Track outcomes: 'auto' (to Redis streams with a Redis URL, "
        "else to --events-file if set) or 'off'",
        choices=("auto", "off"),
    )
    events_redis_url: str | None = _setting(
        None, "events to this Redis instead of --redis-url (keeps them apart from the flags)"
    )
    events_file: Path | None = _setting(None, "events as JSONL lines to this file when no Redis")
    events_flush_interval_s: float = _setting(0.25, "how often buffered events are written")
    events_max_buffer: int = _setting(
        100_000, "events buffered while the destination is away; more are dropped and counted"
    )
    events_stream_max_len: int = _setting(
        2_000_000, "MAXLEN (approximate) of each Redis event stream"
    )
    exposure_dedupe_capacity: int = _setting(
        100_000, "exposure keys remembered per generation (two generations) to record each once"
    )
    signals_redis_url: str | None = _setting(
        None,
        "write per-version signals (docs/rollouts.md) with this Redis URL, e.g. a user that may "
        "write only signal keys (default: --redis-url; no Redis URL at all: no signals)",
    )
    signals_interval_s: float = _setting(
        1.0, "write signals to Redis once per this many seconds (0 turns signals off)"
    )
    signals_retention_s: int = _setting(
        960, "signal keys expire after this many seconds (the longest guardrail window + margin)"
    )
    signals_max_backlog: int = _setting(
        900,
        "while Redis is unavailable, keep at most this many (flag, second) entries of signals; "
        "older ones are dropped and counted in trafficsplit_signal_dropped_total",
    )
    shadow_timeout_s: float = _setting(
        5.0, "deadline of each shadow call (flags' shadow sections; off the request path)"
    )
    log_level: str = _setting("INFO", "DEBUG, INFO, WARNING, ERROR")

    def stable_versions(self) -> dict[str, str]:
        """``--stable`` as model → version."""
        return dict(parse_stable(item) for item in self.stable)

    def named_backends(self) -> dict[str, str]:
        """``--backend`` as name → host:port."""
        return dict(parse_named_backend(item) for item in self.backend)


def parse_stable(item: str) -> tuple[str, str]:
    model, sep, version = item.partition("=")
    if not sep or not model.strip() or not version.strip():
        raise ValueError(f"--stable takes MODEL=VERSION (e.g. digits=1), not {item!r}")
    return model.strip(), version.strip()


def parse_named_backend(item: str) -> tuple[str, str]:
    name, sep, address = item.partition("=")
    name, address = name.strip(), address.strip()
    if (
        not sep
        or not name
        or ":" not in address
        or not name.replace("-", "").replace("_", "").isalnum()
    ):
        raise ValueError(
            f"--backend takes NAME=HOST:PORT (a name of letters, digits, - and _), not {item!r}"
        )
    return name, address


def _kind(f: dataclasses.Field[Any]) -> type:
    annotation = str(f.type)
    for name, kind in (("Path", Path), ("float", float), ("int", int), ("bool", bool)):
        if annotation.startswith(name):
            return kind
    return str


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trafficsplit-sidecar",
        description="Route inference to model versions by feature-flag cohort.",
    )
    for f in dataclasses.fields(Settings):
        help_text = f"{f.metadata['help']} (env {env_name(f.name)})"
        option = f"--{f.name.replace('_', '-')}"
        if _kind(f) is bool:
            parser.add_argument(option, dest=f.name, action="store_true", default=None,
                                help=help_text)  # fmt: skip
        elif f.metadata.get("repeatable"):
            parser.add_argument(option, dest=f.name, action="append", default=None,
                                help=help_text)  # fmt: skip
        else:
            parser.add_argument(option, dest=f.name, type=_kind(f), default=None,
                                choices=f.metadata.get("choices"), help=help_text)  # fmt: skip
    return parser


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def load_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Parse ``argv`` and ``env`` (default: the process's). Raises SystemExit with a usage
    message for a bad value, as argparse does."""
    env = os.environ if env is None else env
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        variable = env_name(f.name)
        kind = _kind(f)
        if args[f.name] is not None:
            value: Any = args[f.name]
        elif env.get(variable, "").strip():
            raw = env[variable]
            if kind is bool:
                value = _truthy(raw)
            elif f.metadata.get("repeatable"):
                value = [part for part in raw.split(",") if part.strip()]
            else:
                try:
                    value = kind(raw)
                except ValueError:
                    parser.error(f"{variable}={raw!r} is not a valid {kind.__name__}")
                choices = f.metadata.get("choices")
                if choices and value not in choices:
                    parser.error(f"{variable}={raw!r}: choose from {', '.join(choices)}")
        else:
            continue
        values[f.name] = tuple(value) if f.metadata.get("repeatable") else value
    settings = Settings(**values)
    try:
        settings.stable_versions()
        settings.named_backends()
    except ValueError as exc:
        parser.error(str(exc))
    if min(settings.signals_retention_s, settings.signals_max_backlog) < 1:
        parser.error("--signals-retention-s and --signals-max-backlog must be at least 1")
    if settings.signals_interval_s < 0:
        parser.error("--signals-interval-s must be >= 0 (0 turns signals off)")
    return settings
