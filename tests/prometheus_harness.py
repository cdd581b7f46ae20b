"""A real Prometheus for tests (Debian's ``prometheus`` package; `make test` installs it).

:class:`PrometheusServer` writes a config that scrapes the given targets every ``scrape_interval``
and loads the given rule files, starts the server on a free loopback port with a throw-away data
directory, waits until it is ready, and stops it by PID. :meth:`PrometheusServer.query` reads the
HTTP API and raises on an error answer (a bad expression fails the test that sent it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import urlopen

import yaml
from servers import free_port, stop_process, wait_until

INSTALL_HINT = "run `make test` (it installs Debian's prometheus package, which has promtool)"


def binary(name: str) -> str:
    """Path of ``prometheus`` or ``promtool``; a missing one fails with what to do."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: {INSTALL_HINT}")
    return path


class PrometheusError(RuntimeError):
    """The HTTP API answered with an error (a bad query, an unknown endpoint)."""


class PrometheusServer:
    def __init__(
        self,
        workdir: Path,
        *,
        targets: Sequence[str],
        rule_files: Sequence[Path] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
    ) -> None:
        self.binary = binary("prometheus")
        self.workdir = workdir
        self.port = free_port()
        self.config = {
            "global": {
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "evaluation_interval": evaluation_interval,
            },
            "rule_files": [str(p.resolve()) for p in rule_files],
            "scrape_configs": [
                {"job_name": "trafficsplit", "static_configs": [{"targets": list(targets)}]}
            ],
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 30.0) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config))
        log = open(self.workdir / "prometheus.log", "ab")  # noqa: SIM115 (lives with proc)
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            wait_until(self._ready, timeout=timeout, interval=0.05, what="prometheus ready")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
        with urlopen(f"{self.url}/-/ready", timeout=1) as response:
            return int(response.status) == 200

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``; its ``data``, or PrometheusError with the server's reason."""
        url = f"{self.url}/api/v1/{path}" + (f"?{urlencode(params)}" if params else "")
        try:
            with urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except HTTPError as exc:  # 400/422: the answer still says why
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
