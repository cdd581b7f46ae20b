"""Real servers for tests: started on a free loopback port, bounded in time, stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], T], *, timeout: float, interval: float = 0.005, what: str = ""
) -> T:
    """Poll ``condition`` until it returns a truthy value; fail loudly at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception as exc:  # the condition may raise until the thing is up
            last_error = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or condition}: {last_error}"
    )


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


class RedisServer:
    """A throw-away ``redis-server`` (no persistence) on 127.0.0.1; restartable on its port.

    ``client_options`` are what a client needs to reach it (password, TLS files); the readiness
    check uses them too.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        extra_args: tuple[str, ...] = (),
        client_options: dict[str, object] | None = None,
        port: int | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run `make test` (it installs it with apt)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_args = extra_args
        self.client_options = client_options or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *, timeout: float = 15.0) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            *self.extra_args,
        ]
        if self.client_options.get("ssl"):  # TLS only: plain port off, TLS on our port
            args[2] = "0"
            args += ["--tls-port", str(self.port)]
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115 (lives with proc)
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            **self.client_options,
        )  # type: ignore[arg-type]
        try:
            wait_until(client.ping, timeout=timeout, interval=0.02, what=f"redis on {self.port}")
        finally:
            client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def kill(self) -> None:
        """Die without a goodbye, as a crashed or partitioned Redis would."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=2,
            socket_connect_timeout=2,
            **self.client_options,
        )  # type: ignore[arg-type]
