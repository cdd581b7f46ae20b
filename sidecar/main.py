"""``trafficsplit-sidecar``: parse settings, run the sidecar until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from sidecar.resources import MissingLocalInput, check_local_inputs
from sidecar.server import Sidecar
from sidecar.settings import load_settings

log = logging.getLogger("sidecar")


async def serve(argv: Sequence[str] | None = None) -> int:
    settings = load_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        check_local_inputs(
            flags_file=settings.flags_file,
            model_repository=settings.model_repository,
            redis_url=settings.redis_url,
            triton_url=settings.triton_url,
        )
    except MissingLocalInput as exc:
        print(f"trafficsplit-sidecar: {exc}", file=sys.stderr)
        return 2
    sidecar = Sidecar.build(settings)
    try:
        address = await sidecar.start()
    except Exception as exc:
        log.error("cannot start: %s", exc)
        await sidecar.stop(grace=0, drain_delay=0)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # One machine-readable line on stdout, once signals are handled: scripts and tests wait for it.
    event = {"event": "listening", "address": address}
    if sidecar.metrics_address:
        event["metrics"] = f"http://{sidecar.metrics_address}/metrics"
    print(json.dumps(event), flush=True)
    await stop.wait()
    log.info(
        "shutting down: health NOT_SERVING, accepting for %.1fs more, then draining for up to "
        "%.1fs",
        settings.drain_delay_s,
        settings.grace_s,
    )
    await sidecar.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        import uvloop  # optional: a faster event loop when installed
    except ImportError:
        sys.exit(asyncio.run(serve(argv)))
    sys.exit(uvloop.run(serve(argv)))


if __name__ == "__main__":
    main()
