"""``trafficsplit-controller``: the process around :class:`rollout.controller.Controller`.

Parses its options once (argument > ``TRAFFICSPLIT_*`` environment > default), serves
``/metrics``, ticks until SIGTERM/SIGINT, then gives the lease back so a standby takes over at
once rather than after the lease expires. Run several replicas: one acts, the others wait.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import click
from prometheus_client import start_http_server

from flags.errors import FlagsError
from flags.redis_conn import DEFAULT_URL, sync_client
from flags.redis_keys import DEFAULT_PREFIX, RedisKeys
from rollout.controller import Controller, ControllerConfig
from rollout.golden_jobs import GoldenJobs
from rollout.metrics import ControllerMetrics
from rollout.notify import Webhooks, log_event
from rollout.windows import RedisWindows


def run(controller: Controller, stop: threading.Event) -> None:
    """Tick every ``tick_s`` until ``stop`` is set; a failing tick is logged, never fatal."""
    interval = controller.config.tick_s
    while not stop.is_set():
        started = time.monotonic()
        try:
            controller.tick()
        except Exception as exc:  # keep the loop alive: the next tick re-reads everything
            controller.metrics.errors.labels("unexpected").inc()
            log_event("tick_crashed", error=f"{type(exc).__name__}: {exc}")
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
    controller.lease.release()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--redis-url",
    envvar="TRAFFICSPLIT_REDIS_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="Redis holding flags, rollouts and signal windows.",
)
@click.option(
    "--prefix", envvar="TRAFFICSPLIT_REDIS_PREFIX", default=DEFAULT_PREFIX, show_default=True
)
@click.option(
    "--tick",
    "tick_s",
    envvar="TRAFFICSPLIT_CONTROLLER_TICK",
    type=click.FloatRange(0.05, 60),
    default=1.0,
    show_default=True,
    help="Seconds between evaluations.",
)
@click.option(
    "--lease-ttl",
    "lease_ttl_s",
    envvar="TRAFFICSPLIT_CONTROLLER_LEASE_TTL",
    type=click.FloatRange(0.2, 300),
    default=5.0,
    show_default=True,
    help="Leader lease: a standby takes over within this long after the leader dies.",
)
@click.option(
    "--replica",
    envvar="TRAFFICSPLIT_CONTROLLER_REPLICA",
    default=None,
    help="This replica's name in the lease and the audit (default: host:pid).",
)
@click.option(
    "--metrics-port",
    envvar="TRAFFICSPLIT_CONTROLLER_METRICS_PORT",
    type=click.IntRange(0, 65535),
    default=9465,
    show_default=True,
    help="Prometheus /metrics port (0: none).",
)
@click.option(
    "--webhook-timeout",
    "webhook_timeout_s",
    type=click.FloatRange(0.1, 60),
    default=2.0,
    show_default=True,
    help="Seconds a notification POST may take.",
)
@click.option(
    "--triton-url",
    envvar="TRAFFICSPLIT_TRITON_URL",
    help="Run golden sets on Triton's gRPC host:port (default: the embedded onnxruntime engine).",
)
@click.option(
    "--model-repository",
    envvar="TRAFFICSPLIT_MODEL_REPOSITORY",
    type=click.Path(path_type=Path, file_okay=False),
    help="The embedded engine's models, and where a relative golden file is found "
    "(default: the bundled triton_models/).",
)
@click.option(
    "--golden-timeout",
    "golden_timeout_s",
    type=click.FloatRange(0.1, 600),
    default=10.0,
    show_default=True,
    help="Seconds per golden-set request.",
)
@click.option(
    "--golden-max-age",
    "golden_max_age_s",
    type=click.FloatRange(0),
    default=None,
    help="Re-run a stored golden result older than this many seconds (default: any age, "
    "while the versions and the golden spec are the same).",
)
def cli(
    redis_url: str,
    prefix: str,
    tick_s: float,
    lease_ttl_s: float,
    replica: str | None,
    metrics_port: int,
    webhook_timeout_s: float,
    triton_url: str | None,
    model_repository: Path | None,
    golden_timeout_s: float,
    golden_max_age_s: float | None,
) -> None:
    """Drive every flag with a `ramp` section and a started rollout (`flagctl rollout start`)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if tick_s * 2 > lease_ttl_s:
        raise click.UsageError(
            "--lease-ttl must be at least twice --tick (the lease is renewed every tick)"
        )
    replica = replica or f"{socket.gethostname()}:{os.getpid()}"
    try:
        client = sync_client(redis_url)
    except FlagsError as exc:
        raise click.ClickException(str(exc)) from exc
    metrics = ControllerMetrics()
    if metrics_port:
        try:
            start_http_server(metrics_port, addr="0.0.0.0", registry=metrics.registry)
        except OSError as exc:
            raise click.ClickException(
                f"cannot serve /metrics on port {metrics_port}: {exc}"
            ) from exc
    golden = GoldenJobs(
        triton_url=triton_url,
        model_repository=model_repository,
        timeout_s=golden_timeout_s,
        actor=f"trafficsplit-controller/{replica}",
    )
    controller = Controller(
        client,
        RedisWindows(client, prefix, url=redis_url),
        keys=RedisKeys(prefix),
        config=ControllerConfig(
            tick_s=tick_s,
            lease_ttl_s=lease_ttl_s,
            replica=replica,
            actor=f"trafficsplit-controller/{replica}",
            golden_max_age_s=golden_max_age_s,
        ),
        metrics=metrics,
        webhooks=Webhooks(timeout_s=webhook_timeout_s),
        golden=golden,
    )
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log_event("controller_started", replica=replica, tick_s=tick_s, lease_ttl_s=lease_ttl_s)
    run(controller, stop)
    golden.close()
    log_event("controller_stopped", replica=replica)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
