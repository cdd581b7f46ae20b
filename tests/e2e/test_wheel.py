"""``pip install .`` gives a working sidecar: build the wheel, install it into a fresh virtualenv,
run the installed console scripts from a directory that is not the checkout.

No network. The wheel is built by this test's own interpreter (the project's .venv: setuptools,
grpcio-tools and mypy-protobuf come with the dev extra) without build isolation, from a copy of the
worktree that has no sidecar/_proto, so the build step must generate it. It is installed with
``--no-deps`` into a virtualenv that reaches the .venv's dependencies through one ``.pth`` line.
A directory named in a ``.pth`` file is appended to sys.path but not scanned for ``.pth`` files of
its own, so the .venv's editable install of this checkout (``__editable__*.pth``) is never loaded
there; ``test_imports_resolve_inside_the_fresh_virtualenv`` checks exactly that.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from servers import stop_process
from support import ROOT
from tritonclient.utils import InferenceServerException

pytestmark = [pytest.mark.install]

START_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 120.0
# Local state and build output that a source tree may hold and a clean build must not rely on.
NOT_SOURCE = shutil.ignore_patterns(
    ".venv*", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "_proto", "_bundled"
)


@dataclass(frozen=True)
class Install:
    wheel: Path
    venv: Path
    site_packages: Path
    workdir: Path  # an empty directory outside the checkout: the installed scripts run here
    log: Path

    def script(self, name: str) -> Path:
        return self.venv / "bin" / name

    def run(self, *argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in argv],
            cwd=self.workdir,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )


def clean_env() -> dict[str, str]:
    """The caller's environment minus what would point Python or the sidecar back at the checkout."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
        and not k.startswith("TRAFFICSPLIT_")
    }


def checked(argv: Sequence[str | Path]) -> None:
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    base = tmp_path_factory.mktemp("wheel")
    source, dist, venv = base / "source", base / "dist", base / "venv"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    checked([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, source])
    (wheel,) = dist.glob("trafficsplit-*.whl")
    checked([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site_packages = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site_packages / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    checked([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel])
    workdir = base / "elsewhere"
    workdir.mkdir()
    return Install(wheel, venv, site_packages, workdir, base / "sidecar.log")


def test_the_wheel_carries_generated_code_and_the_bundled_defaults(installed: Install) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for expected in (
        "sidecar/_proto/trafficsplit/v1/trafficsplit_pb2.py",
        "sidecar/_proto/trafficsplit/v1/trafficsplit_pb2_grpc.py",
        "sidecar/_proto/trafficsplit/v1/trafficsplit_pb2.pyi",
        "sidecar/_bundled/deploy/flags/digits.json",
        "sidecar/_bundled/triton_models/digits/config.pbtxt",
        "sidecar/_bundled/triton_models/digits/1/model.onnx",
        "sidecar/_bundled/triton_models/digits/2/model.onnx",
        "sidecar/resources.py",
        "flags/cli.py",
    ):
        assert expected in names, f"{expected} missing from {installed.wheel.name}"
    assert not [n for n in names if n.startswith(("tests/", "tools/", "proto/", "bench/"))]
    grpc_module = zipfile.ZipFile(installed.wheel).read(
        "sidecar/_proto/trafficsplit/v1/trafficsplit_pb2_grpc.py"
    )
    assert b"from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2" in grpc_module


def test_imports_resolve_inside_the_fresh_virtualenv(installed: Install) -> None:
    probe = (
        "import json, flags, sidecar, sidecar._proto.trafficsplit.v1.trafficsplit_pb2_grpc as g\n"
        "from sidecar.resources import default_flags_file, default_model_repository\n"
        "print(json.dumps({'flags': flags.__file__, 'sidecar': sidecar.__file__, 'grpc': g.__file__,"
        " 'flags_file': str(default_flags_file()), 'models': str(default_model_repository())}))"
    )
    result = installed.run(installed.venv / "bin" / "python", "-c", probe)
    assert result.returncode == 0, result.stderr
    paths = {k: Path(v) for k, v in json.loads(result.stdout).items()}
    for name, path in paths.items():
        assert path.is_relative_to(installed.site_packages), f"{name} resolved to {path}"
    assert (
        paths["flags_file"] == installed.site_packages / "sidecar/_bundled/deploy/flags/digits.json"
    )
    assert paths["flags_file"].is_file()
    assert (paths["models"] / "digits" / "config.pbtxt").is_file()


def test_console_scripts_answer_help(installed: Install) -> None:
    flagctl = installed.run(installed.script("flagctl"), "--help")
    assert flagctl.returncode == 0, flagctl.stderr
    assert "ramp" in flagctl.stdout
    sidecar = installed.run(installed.script("trafficsplit-sidecar"), "--help")
    assert sidecar.returncode == 0, sidecar.stderr
    assert "--model-repository" in sidecar.stdout


def test_a_missing_model_repository_is_a_clear_error_not_a_traceback(installed: Install) -> None:
    result = installed.run(
        installed.script("trafficsplit-sidecar"),
        "--listen",
        "127.0.0.1:0",
        "--model-repository",
        installed.workdir / "no-such-repository",
    )
    assert result.returncode != 0
    assert "no-such-repository" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert '"listening"' not in result.stdout


def test_the_installed_sidecar_serves_with_its_documented_defaults(installed: Install) -> None:
    with running_sidecar(installed) as address:
        client = triton.InferenceServerClient(address)
        pixels = triton.InferInput("pixels", [1, 64], "FP32")
        pixels.set_data_from_numpy(np.zeros((1, 64), np.float32))
        result = client.infer("digits", [pixels], headers={"x-user-id": "wheel-user-1"})
        response = result.get_response()
        variant = response.parameters["trafficsplit.variant"].string_param
        assert (variant, response.model_version) in {("control", "1"), ("candidate", "2")}
        (label,) = result.as_numpy("label").ravel().tolist()
        assert label in range(10)
        with pytest.raises(InferenceServerException, match="x-user-id"):
            client.infer("digits", [pixels])  # no user id, anonymous not allowed
        client.close()


@contextmanager
def running_sidecar(installed: Install, *args: str) -> Iterator[str]:
    """The installed ``trafficsplit-sidecar`` on a free port, started from ``installed.workdir``;
    yields the address from its ``listening`` line and stops it by PID (graceful exit asserted)."""
    with installed.log.open("wb") as log:
        proc = subprocess.Popen(
            [installed.script("trafficsplit-sidecar"), "--listen", "127.0.0.1:0", *args],
            cwd=installed.workdir,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=log,
        )
    try:
        address = wait_for_listening(proc, installed.log)
        yield address
    finally:
        stop_process(proc)
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == 0, f"exit {proc.returncode} after SIGTERM" + tail(installed.log)


def wait_for_listening(proc: subprocess.Popen[bytes], log: Path) -> str:
    """Read stdout until the ``{"event": "listening", ...}`` line, the process exits, or the deadline."""
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    pending = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.startswith(b"{") and json.loads(line).get("event") == "listening":
                    return str(json.loads(line)["address"])
            if chunk:
                continue
        if proc.poll() is not None:
            raise AssertionError(
                f"sidecar exited with {proc.returncode} before listening" + tail(log)
            )
    raise AssertionError(f"sidecar did not listen within {START_TIMEOUT_S}s" + tail(log))


def tail(log: Path) -> str:
    return "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
