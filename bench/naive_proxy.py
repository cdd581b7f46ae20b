"""A naive grpc.aio pass-through proxy: the floor of any Python grpc.aio hop (a hop baseline).

    python -m bench.naive_proxy --listen 127.0.0.1:0 --upstream 127.0.0.1:8001

Every unary method is forwarded as opaque bytes (no protobuf parse or serialize, no routing, no
telemetry) on one channel, with the caller's metadata and deadline. It prints the same
``{"event": "listening", "address": ...}`` line as the sidecar and stops on SIGTERM. Whatever the
sidecar costs above this row is its own code; what this row costs above nginx is grpc.aio's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

Handler = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


class Forward(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = grpc.unary_unary_rpc_method_handler(self._forwarder(method))
            self._handlers[method] = handler
        return handler

    def _forwarder(self, method: str) -> Handler:
        call = self._channel.unary_unary(method)

        async def forward(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            metadata = tuple(
                (k, v) for k, v in (context.invocation_metadata() or ()) if not k.startswith(":")
            )
            response: bytes = await call(
                request, metadata=metadata, timeout=context.time_remaining()
            )
            return response

        return forward


async def serve(listen: str, upstream: str) -> None:
    channel = grpc.aio.insecure_channel(upstream)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Forward(channel),))
    host = listen.rsplit(":", 1)[0]
    port = server.add_insecure_port(listen)
    await server.start()
    print(json.dumps({"event": "listening", "address": f"{host}:{port}"}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)
    await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    try:
        import uvloop  # the sidecar uses it when installed; so does its floor
    except ImportError:
        asyncio.run(serve(args.listen, args.upstream))
    else:
        uvloop.run(serve(args.listen, args.upstream))


if __name__ == "__main__":
    main()
