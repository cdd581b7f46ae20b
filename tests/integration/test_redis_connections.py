"""Every documented way of reaching Redis works for both the sidecar's source and flagctl:
password AUTH, TLS (``rediss://``) and Sentinel (the ACL user is in test_redis_flags.py)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from servers import RedisServer, free_port, stop_process, wait_until
from support import digits_flag

from flags.admin import FlagAdmin
from flags.redis_conn import redact, sync_client
from flags.redis_keys import RedisKeys
from flags.schema import parse_flag
from flags.sources import RedisFlagSource
from flags.store import FlagStore

pytestmark = pytest.mark.redis


def write_then_load(url: str) -> bool:
    """flagctl's write path, then a sidecar's source reading it back: serves what was written?"""
    written = FlagAdmin(sync_client(url), keys=RedisKeys("conn:"), url=url).apply(
        parse_flag(digits_flag()), reason="t"
    )

    async def load() -> int | None:
        store = FlagStore()
        source = RedisFlagSource(url, store, keys=RedisKeys("conn:"), start_timeout=5)
        await source.start()
        try:
            flag = store.snapshot.get("digits")
            return flag.revision if flag else None
        finally:
            await source.close()

    return asyncio.run(load()) == written.revision


def test_password_auth(tmp_path: Path) -> None:
    server = RedisServer(
        tmp_path, extra_args=("--requirepass", "pa ss/wd"), client_options={"password": "pa ss/wd"}
    ).start()
    try:
        assert write_then_load(f"redis://:pa%20ss%2Fwd@127.0.0.1:{server.port}/0")
        assert "pa ss" not in redact(f"redis://:pa%20ss%2Fwd@127.0.0.1:{server.port}/0")
    finally:
        server.stop()


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1, made with openssl."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make test certificates (Debian package openssl)"
    d = tmp_path / "tls"
    d.mkdir()

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=60)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=trafficsplit-test-ca",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    )
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


def test_tls_rediss_url(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    server = RedisServer(
        tmp_path,
        extra_args=(
            "--tls-cert-file",
            str(tls_files["cert"]),
            "--tls-key-file",
            str(tls_files["key"]),
            "--tls-ca-cert-file",
            str(tls_files["ca"]),
            "--tls-auth-clients",
            "no",
        ),
        client_options={"ssl": True, "ssl_ca_certs": str(tls_files["ca"])},
    ).start()
    try:
        url = f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={tls_files['ca']}&ssl_cert_reqs=required"
        assert write_then_load(url)
        with pytest.raises(redis.exceptions.ConnectionError, match=r"(?i)ssl|certificate|verify"):
            sync_client(
                f"rediss://127.0.0.1:{server.port}/0?ssl_cert_reqs=required"
            ).ping()  # unknown CA
    finally:
        server.stop()


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[RedisServer, int]]:
    master = RedisServer(tmp_path / "master").start()
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\nsentinel monitor flags 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds flags 5000\n"
    )
    proc = subprocess.Popen(
        [master.binary, str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        probe = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
        wait_until(
            lambda: probe.execute_command("SENTINEL", "get-master-addr-by-name", "flags"),
            timeout=15,
            interval=0.05,
            what="sentinel to know the master",
        )
        probe.close()
        yield master, port
    finally:
        stop_process(proc)
        master.stop()


def test_sentinel_url(sentinel: tuple[RedisServer, int]) -> None:
    _, port = sentinel
    assert write_then_load(f"redis+sentinel://127.0.0.1:{port}/flags/0")
