"""Start a sidecar as a child process and wait for its "listening" line (demo, tests, bench)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent


class SidecarProcess:
    """``with SidecarProcess([...]) as sc: sc.address`` — stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
        stderr_path: Path | None = None,
    ) -> None:
        # The drain delay is for load balancers; a child process's users stop by themselves.
        drain = [] if "--drain-delay-s" in args else ["--drain-delay-s", "0"]
        self.args = ["--listen", "127.0.0.1:0", *drain, *args]
        self.env = {**os.environ, **(env or {})}
        self.start_timeout = start_timeout
        self.stderr_path = stderr_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.metrics_url = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> SidecarProcess:
        stderr = open(self.stderr_path, "ab") if self.stderr_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.main", *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        if self.stderr_path:
            stderr.close()  # type: ignore[union-attr]
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        buffer = b""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sidecar exited with {self.proc.returncode} before listening"
                    + self._log_tail()
                )
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if not ready:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            buffer += chunk
            for line in buffer.splitlines():
                if line.startswith(b"{"):
                    event = json.loads(line)
                    if event.get("event") == "listening":
                        self.address = str(event["address"])
                        self.metrics_url = str(event.get("metrics", ""))
                        return self
        self.stop()
        raise TimeoutError(
            f"sidecar did not listen within {self.start_timeout}s" + self._log_tail()
        )

    def _log_tail(self) -> str:
        if self.stderr_path and self.stderr_path.exists():
            return "\n" + "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-20:])
        return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        code = self.proc.returncode
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None
        return code

    def __enter__(self) -> SidecarProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
