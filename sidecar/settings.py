"""Sidecar configuration: one frozen object, parsed once at start-up.

Precedence: command-line argument > environment variable > default. Nothing reads the environment
anywhere else (OpenTelemetry's standard ``OTEL_*`` variables excepted: its SDK reads them).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flags.redis_keys import DEFAULT_PREFIX

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = "127.0.0.1:8500"
    metrics_listen: str = ""  # host:port for Prometheus /metrics; empty = off
    redis_url: str | None = None
    redis_prefix: str = DEFAULT_PREFIX
    flags_file: Path = ROOT / "deploy" / "flags" / "digits.json"
    snapshot_file: Path | None = None
    triton_url: str | None = None
    model_repository: Path = ROOT / "triton_models"
    batch_delay_ms: float = 0.0
    user_id_header: str = "x-user-id"
    attribute_prefix: str = "x-attr-"
    allow_anonymous: bool = False
    trace_user_id: bool = False
    max_message_bytes: int = 64 * MIB
    max_user_id_length: int = 256
    max_attributes: int = 64
    max_attribute_length: int = 1024
    default_timeout_s: float = 30.0
    retry_budget_ratio: float = 0.1
    retry_budget_min_per_s: float = 10.0
    log_level: str = "INFO"
    grace_s: float = 5.0


# (flag, environment variable, type, help)
_OPTIONS: tuple[tuple[str, str, type, str], ...] = (
    (
        "metrics_listen",
        "TRAFFICSPLIT_METRICS_LISTEN",
        str,
        "host:port serving Prometheus /metrics (off when unset)",
    ),
    ("listen", "TRAFFICSPLIT_LISTEN", str, "host:port to serve on (loopback unless you say so)"),
    (
        "redis_url",
        "TRAFFICSPLIT_REDIS_URL",
        str,
        "flags from Redis (redis://, rediss://, redis+sentinel://)",
    ),
    ("redis_prefix", "TRAFFICSPLIT_REDIS_PREFIX", str, "Redis key prefix"),
    ("flags_file", "TRAFFICSPLIT_FLAGS_FILE", Path, "flags from this JSON/YAML file when no Redis"),
    ("snapshot_file", "TRAFFICSPLIT_SNAPSHOT_FILE", Path, "save/restore the last good flags here"),
    (
        "triton_url",
        "TRAFFICSPLIT_TRITON_URL",
        str,
        "Triton gRPC host:port; embedded onnxruntime if unset",
    ),
    (
        "model_repository",
        "TRAFFICSPLIT_MODEL_REPOSITORY",
        Path,
        "model repository for the embedded engine",
    ),
    (
        "batch_delay_ms",
        "TRAFFICSPLIT_BATCH_DELAY_MS",
        float,
        "embedded engine: wait this long to batch requests",
    ),
    ("user_id_header", "TRAFFICSPLIT_USER_ID_HEADER", str, "metadata key carrying the user id"),
    (
        "attribute_prefix",
        "TRAFFICSPLIT_ATTRIBUTE_PREFIX",
        str,
        "metadata prefix of subject attributes",
    ),
    ("max_message_bytes", "TRAFFICSPLIT_MAX_MESSAGE_BYTES", int, "largest request/response"),
    (
        "default_timeout_s",
        "TRAFFICSPLIT_DEFAULT_TIMEOUT_S",
        float,
        "backend deadline when the caller sets none",
    ),
    (
        "retry_budget_ratio",
        "TRAFFICSPLIT_RETRY_BUDGET_RATIO",
        float,
        "fallback retries allowed per request",
    ),
    ("log_level", "TRAFFICSPLIT_LOG_LEVEL", str, "DEBUG, INFO, WARNING, ERROR"),
)
_SWITCHES: tuple[tuple[str, str, str], ...] = (
    (
        "allow_anonymous",
        "TRAFFICSPLIT_ALLOW_ANONYMOUS",
        "serve the default variant to requests without a user id",
    ),
    ("trace_user_id", "TRAFFICSPLIT_TRACE_USER_ID", "put raw user ids on spans (off: privacy)"),
)


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trafficsplit-sidecar",
        description="Route inference to model versions by feature-flag cohort.",
    )
    for name, env, kind, text in _OPTIONS:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            default=None,
            help=f"{text} (env {env})",
        )
    for name, env, text in _SWITCHES:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            action="store_true",
            default=None,
            help=f"{text} (env {env})",
        )
    return parser


def load_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    env = os.environ if env is None else env
    args = vars(build_parser().parse_args(argv))
    values: dict[str, object] = {}
    for name, variable, kind, _ in _OPTIONS:
        if args[name] is not None:
            values[name] = args[name]
        elif env.get(variable):
            values[name] = kind(env[variable])
    for name, variable, _ in _SWITCHES:
        if args[name]:
            values[name] = True
        elif variable in env:
            values[name] = _truthy(env[variable])
    return Settings(**values)  # type: ignore[arg-type]
