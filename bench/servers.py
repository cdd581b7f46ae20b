"""The servers the suite starts: Redis, Triton (CPU), nginx and sidecars, all on loopback.

Every one is started on a free 127.0.0.1 port, waited for by polling a real request with a
deadline, and stopped by PID in ``finally`` (``contextlib.ExitStack``) however the part ends.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tritonclient.grpc as triton_grpc

from bench.common import (
    ROOT,
    RedisServer,
    TritonServer,
    build_python_backend_repository,
    free_port,
    read_line,
    stop_process,
)
from flags.admin import FlagAdmin
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from flags.schema import parse_flag
from sidecar.launcher import SidecarProcess

NGINX_TEMPLATE = ROOT / "bench" / "nginx.conf"
DIGITS_FLAG = ROOT / "deploy" / "flags" / "digits.json"
PREFIX = "bench:"


def wait_ready(
    url: str, *, timeout: float, what: str, headers: dict[str, str] | None = None
) -> None:
    """Poll a KServe-v2 server (or a proxy in front of one) until the digits model is ready."""
    client = triton_grpc.InferenceServerClient(url)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    try:
        while time.monotonic() < deadline:
            try:
                if client.is_model_ready("digits", headers=headers, client_timeout=1.0):
                    return
            except Exception as exc:  # not listening yet
                last = exc
            time.sleep(0.05)  # poll interval, not synchronisation: the deadline bounds it
    finally:
        client.close()
    raise RuntimeError(f"{what} at {url} not ready within {timeout} s: {last}")


@dataclass
class Nginx:
    proc: subprocess.Popen[bytes]
    port: int
    prefix: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise RuntimeError("nginx not found: `make bench` installs Debian's nginx (apt-get)")
    return found


@contextmanager
def nginx(triton_port: int) -> Iterator[Nginx]:
    """nginx -g 'daemon off;' as our child, proxying gRPC to Triton with upstream keepalive."""
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmp:
        prefix = Path(tmp)
        port = free_port()
        # As root, nginx would drop its worker to "nobody", who cannot use our private tmpdir.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        conf = (
            NGINX_TEMPLATE.read_text()
            .replace("@USER@", user)
            .replace("@PREFIX@", str(prefix))
            .replace("@TRITON_PORT@", str(triton_port))
            .replace("@PORT@", str(port))
        )
        (prefix / "nginx.conf").write_text(conf)
        log = prefix / "error.log"
        proc = subprocess.Popen(
            [
                nginx_binary(),
                "-p",
                str(prefix),
                "-c",
                str(prefix / "nginx.conf"),
                "-e",
                str(log),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            server = Nginx(proc, port, prefix)
            try:
                wait_ready(server.url, timeout=20, what="nginx")
            except RuntimeError as exc:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"{exc}\n{tail}") from exc
            yield server
        finally:
            stop_process(proc)


@dataclass
class NaiveProxy:
    proc: subprocess.Popen[str]
    url: str

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextmanager
def naive_proxy(upstream: str) -> Iterator[NaiveProxy]:
    """``bench/naive_proxy.py`` as our child: grpc.aio forwarding opaque bytes to ``upstream``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.naive_proxy", "--listen", "127.0.0.1:0",
         "--upstream", upstream],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        event = json.loads(read_line(proc, timeout=30, what="naive proxy listening line"))
        proxy = NaiveProxy(proc, event["address"])
        wait_ready(proxy.url, timeout=20, what="naive grpc.aio proxy")
        yield proxy
    finally:
        stop_process(proc)


@contextmanager
def redis_server() -> Iterator[Any]:
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            yield server
        finally:
            server.stop()


@contextmanager
def triton_server() -> Iterator[Any]:
    """Real tritonserver on CPU serving digits v1 and v2 (python backend running the ONNX files)."""
    with tempfile.TemporaryDirectory(prefix="bench-triton-repo-") as tmp:
        repo = build_python_backend_repository(Path(tmp) / "models", (1, 2))
        with TritonServer(repo, ready_timeout_s=120) as server:
            yield server


def load_flag(redis_url: str, document: dict[str, Any] | None = None) -> FlagAdmin:
    """Write the digits flag (the demo flag unless ``document``) into Redis; the admin for it."""
    admin = FlagAdmin(sync_client(redis_url), keys=RedisKeys(PREFIX), actor="bench")
    doc = document or json.loads(DIGITS_FLAG.read_text())
    if document is None:  # the serving benches measure serving: no exposure recording
        doc.pop("experiment", None)
    admin.apply(parse_flag(doc), reason="bench setup", force=True)
    return admin


@contextmanager
def sidecar(
    redis_url: str, triton_url: str, *, log_dir: Path | None = None, extra: Sequence[str] = ()
) -> Iterator[SidecarProcess]:
    args = [
        *extra,
        "--redis-url",
        redis_url,
        "--redis-prefix",
        PREFIX,
        "--triton-url",
        triton_url,
        "--log-level",
        "WARNING",
    ]
    stderr = (log_dir / f"sidecar-{time.monotonic_ns()}.log") if log_dir else None
    process = SidecarProcess(args, start_timeout=60, stderr_path=stderr)
    with process:
        wait_ready(process.address, timeout=30, what="sidecar", headers={"x-user-id": "bench"})
        yield process


@dataclass
class Stack:
    redis: Any
    triton: Any
    admin: FlagAdmin
    exits: ExitStack


@contextmanager
def stack(flag: dict[str, Any] | None = None) -> Iterator[Stack]:
    """Redis with the digits flag and Triton; sidecars and nginx are started by each part."""
    with ExitStack() as exits:
        redis = exits.enter_context(redis_server())
        admin = load_flag(redis.url, flag)
        triton = exits.enter_context(triton_server())
        yield Stack(redis, triton, admin, exits)
