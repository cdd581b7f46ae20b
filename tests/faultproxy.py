"""A TCP proxy for fault tests (no toxiproxy): put it between the sidecar and Redis or Triton.

``with FaultProxy(target_port) as proxy:`` listens on a free loopback port (``proxy.port``) and
forwards every byte to ``127.0.0.1:target_port`` until told otherwise:

- :meth:`FaultProxy.break_` — a stopped dependency: the listener closes (new connections are
  refused) and every open connection is reset;
- :meth:`FaultProxy.stall` — a hung dependency: connections are accepted and held open, but no
  byte moves either way (a half-dead peer, a full queue, a partition that drops packets);
- :meth:`FaultProxy.reset` — a peer that crashes mid-stream: every open connection gets a TCP RST,
  new ones are accepted and forwarded as before;
- :meth:`FaultProxy.restore` — back to forwarding (bytes held by a stall flow again).

The proxy runs an asyncio loop of its own in a daemon thread, so tests drive it from plain
synchronous code; every control call returns once the change took effect (bounded by a timeout).
:meth:`FaultProxy.stop` closes everything; it is idempotent and the context manager calls it
however the test ends. Same-host only, like the rest of the harness (``tests/servers.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
CHUNK = 64 * 1024
CONTROL_TIMEOUT_S = 5.0


class Mode(enum.Enum):
    PASS = "pass"
    BROKEN = "broken"
    STALLED = "stalled"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close so the peer sees ECONNRESET, not a clean FIN: SO_LINGER with a zero timeout."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed by the peer: nothing to reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One client connection and its upstream twin."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for task in self.tasks:
            task.cancel()
        _abort_with_rst(self.client)
        if self.upstream is not None:
            _abort_with_rst(self.upstream)


class FaultProxy:
    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = _free_port()
        self.mode = Mode.PASS
        self.accepted = 0  # connections accepted so far (a test can tell a reconnect happened)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing: asyncio.Event | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- control, from the test's thread ------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def break_(self) -> None:
        """Refuse new connections and reset open ones (a dependency that is down)."""
        self._call(self._break())

    def stall(self) -> None:
        """Hold every connection, new and open, without moving a byte."""
        self._call(self._set_flowing(False, Mode.STALLED))

    def reset(self) -> None:
        """RST every open connection; keep accepting and forwarding new ones."""
        self._call(self._reset())

    def restore(self) -> None:
        """Forward again: listen if broken, release what a stall held."""
        self._call(self._restore())

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONTROL_TIMEOUT_S)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CONTROL_TIMEOUT_S)

    # -- inside the proxy's loop --------------------------------------------------------------

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        # reuse_address: the port was ours a moment ago; TIME_WAIT must not block re-listening.
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )

    async def _break(self) -> None:
        self.mode = Mode.BROKEN
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._reset()

    async def _reset(self) -> None:
        for link in list(self._links):
            link.abort()
        self._links.clear()

    async def _set_flowing(self, flowing: bool, mode: Mode) -> None:
        assert self._flowing is not None
        self.mode = mode
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _restore(self) -> None:
        if self._server is None:
            await self._listen()
        await self._set_flowing(True, Mode.PASS)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._reset()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self.accepted += 1
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._flowing.wait()  # a stalled proxy holds the connection, upstream unopened
            up_reader, link.upstream = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.CancelledError):
            self._links.discard(link)
            _abort_with_rst(writer)  # target down: the client sees a reset, as with no proxy
            return
        link.tasks = [
            asyncio.create_task(self._pump(reader, link.upstream)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        if link in self._links:  # ended by a peer, not by a fault: close both sides cleanly
            self._links.discard(link)
            for side in (writer, link.upstream):
                side.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while data := await reader.read(CHUNK):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if writer.can_write_eof() and not writer.is_closing():
                with contextlib.suppress(OSError):
                    writer.write_eof()  # half-close: pass the peer's FIN on
