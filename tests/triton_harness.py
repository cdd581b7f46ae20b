"""A real ``tritonserver`` for tests, from the nvidia-pytriton wheel in ``.venv-triton``.

That Triton build has only the python backend, so :func:`build_python_backend_repository` lays out
a model repository whose ``digits/<v>/model.py`` runs the very same
``triton_models/digits/<v>/model.onnx`` files with onnxruntime on CPU. :class:`TritonServer`
starts the server on a free loopback port, waits until it and the model are ready (checked with a
real tritonclient call), and stops it by PID however the test ends; ``kill()`` then ``start()``
crashes it and brings it back on the same port, as a restarted Triton pod would come back.

Plain Python on purpose: usable from pytest fixtures, scripts and benchmarks alike.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "triton_models"
TRITON_VENV = ROOT / ".venv-triton"
MODEL_NAME = "digits"

# Runs inside Triton's python backend stub, with .venv-triton's numpy and onnxruntime.
MODEL_PY = '''\
"""Serves <onnx_repository>/<version>/model.onnx with onnxruntime on CPU (written by the harness)."""

import json
import os
import time

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        source = config["parameters"]["onnx_repository"]["string_value"]
        path = os.path.join(source, args["model_version"], "model.onnx")
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        # A test can make one version slow (build_python_backend_repository(delays=...)).
        delay = config["parameters"].get("sleep_seconds_v" + args["model_version"], {})
        self.sleep_s = float(delay.get("string_value", "0"))
        # ... or fail on demand: while this file exists (build_python_backend_repository(fail_files=...)).
        fail = config["parameters"].get("fail_file_v" + args["model_version"], {})
        self.fail_file = fail.get("string_value", "")

    def execute(self, requests):
        if self.fail_file and os.path.exists(self.fail_file):
            with open(self.fail_file) as f:
                action = f.read().split()
            if action[:1] == ["sleep"]:  # "sleep S": a slow version instead of a failing one
                time.sleep(float(action[1]))
            else:
                return [pb_utils.InferenceResponse(error=pb_utils.TritonError("injected failure")) for _ in requests]
        if self.sleep_s:
            time.sleep(self.sleep_s)
        responses = []
        for request in requests:
            feeds = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
            try:
                arrays = self.session.run(self.outputs, feeds)
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(a)) for n, a in zip(self.outputs, arrays)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''

CONFIG_PBTXT = """\
# Test-only twin of triton_models/digits/config.pbtxt, served by the python backend.
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
version_policy: {{ specific: {{ versions: [{versions}] }} }}
input [ {{ name: "pixels" data_type: TYPE_FP32 dims: [ 64 ] }} ]
output [
  {{ name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] }},
  {{ name: "label" data_type: TYPE_INT64 dims: [ 1 ] }}
]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
parameters {{ key: "onnx_repository" value: {{ string_value: "{source}" }} }}
"""


class TritonHarnessError(RuntimeError):
    """Triton could not be set up or started; the message says why and what to do."""


def build_python_backend_repository(
    dest: Path,
    versions: Sequence[int] = (1, 2),
    *,
    max_batch_size: int = 64,
    delays: Mapping[int, float] | None = None,
    fail_files: Mapping[int, Path] | None = None,
) -> Path:
    """Write ``dest/digits`` serving ``triton_models/digits/<v>/model.onnx`` for ``versions``;
    ``delays`` makes a version sleep that many seconds per batch (a slow candidate);
    ``fail_files`` makes a version fail every request while that file exists (or, when the file
    says ``sleep S``, answer S seconds late)."""
    source = MODELS / MODEL_NAME
    model_dir = dest / MODEL_NAME
    for version in versions:
        if not (source / str(version) / "model.onnx").is_file():
            raise TritonHarnessError(f"{source}/{version}/model.onnx missing: run `make models`")
        (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
        (model_dir / str(version) / "model.py").write_text(MODEL_PY)
    (model_dir / "config.pbtxt").write_text(
        CONFIG_PBTXT.format(
            name=MODEL_NAME,
            max_batch_size=max_batch_size,
            versions=", ".join(str(v) for v in versions),
            source=source,
        )
        + "".join(
            f'parameters {{ key: "sleep_seconds_v{v}" value: {{ string_value: "{d}" }} }}\n'
            for v, d in (delays or {}).items()
        )
        + "".join(
            f'parameters {{ key: "fail_file_v{v}" value: {{ string_value: "{f}" }} }}\n'
            for v, f in (fail_files or {}).items()
        )
    )
    return dest


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TritonInstall:
    """Paths inside the nvidia-pytriton wheel of a Triton virtualenv."""

    def __init__(self, venv: Path = TRITON_VENV) -> None:
        self.venv = venv
        packages = venv / "lib" / "python3.11" / "site-packages"
        self.root = packages / "pytriton" / "tritonserver"
        self.binary = self.root / "bin" / "tritonserver"
        self.libs = packages / "nvidia_pytriton.libs"
        self.stub = self.root / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"

    def check(self) -> None:
        for path in (self.venv / "bin" / "python", self.binary, self.stub):
            if not path.exists():
                raise TritonHarnessError(
                    f"Triton virtualenv incomplete ({path} missing): run `make triton-venv`"
                )

    def make_backend_directory(self, dest: Path) -> Path:
        """``dest/python`` = pytriton's python backend plus the stub for this Python version."""
        python = dest / "python"
        shutil.copytree(self.root / "backends" / "python", python, ignore=_pycache)
        shutil.copy2(self.stub, python / self.stub.name)
        return dest

    def environment(self) -> dict[str, str]:
        """The venv's bin/ first so the stub's Python imports numpy/onnxruntime from it."""
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self.libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        return env


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _pycache(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__"]


class TritonServer:
    """``with TritonServer(repo) as server:`` a ready Triton at ``server.grpc_url``."""

    def __init__(
        self,
        model_repository: Path,
        *,
        model: str = MODEL_NAME,
        install: TritonInstall | None = None,
        ready_timeout_s: float = 90.0,
        stop_timeout_s: float = 15.0,
        grpc_port: int = 0,
    ) -> None:
        """``grpc_port`` 0: a free port, picked at the first start and kept for restarts."""
        self.model_repository = model_repository
        self.model = model
        self.install = install or TritonInstall()
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.grpc_port = grpc_port
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._log_path: Path | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], TritonServer] | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise TritonHarnessError("Triton is not running")
        return self._process.pid

    def command(self, backend_directory: Path) -> list[str]:
        return [
            str(self.install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_directory}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-http=false",
            "--allow-metrics=false",
            "--model-control-mode=explicit",
            f"--load-model={self.model}",
            "--exit-timeout-secs=5",  # tests stop it; no need to wait 30 s for in-flight work
        ]

    def start(self) -> TritonServer:
        self.install.check()
        self._workdir = tempfile.TemporaryDirectory(prefix="triton-harness-")
        workdir = Path(self._workdir.name)
        backends = self.install.make_backend_directory(workdir / "backends")
        self.grpc_port = self.grpc_port or free_port()
        self._log_path = workdir / "tritonserver.log"
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(backends),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.install.environment(),
                cwd=workdir,
                start_new_session=True,  # its own process group, so a stuck stub dies with it
            )
        # Safety net: a server must not outlive this process even if nobody calls stop().
        self._finalizer = weakref.finalize(self, _kill_group, self._process)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.ready_timeout_s
        client = triton_grpc.InferenceServerClient(self.grpc_url)
        try:
            while time.monotonic() < deadline:
                if self._ready(client):
                    return
                # Waiting for the process to exit doubles as the poll interval.
                try:
                    code = self._process.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
                raise TritonHarnessError(
                    f"tritonserver exited with {code} before {self.model} was ready:\n"
                    + self.log_tail()
                )
        finally:
            client.close()
        raise TritonHarnessError(
            f"tritonserver not ready within {self.ready_timeout_s} s:\n{self.log_tail()}"
        )

    def _ready(self, client: triton_grpc.InferenceServerClient) -> bool:
        try:
            return bool(
                client.is_server_ready(client_timeout=1.0)
                and client.is_model_ready(self.model, client_timeout=1.0)
            )
        except InferenceServerException:
            return False  # not listening yet

    def log_tail(self, lines: int = 40) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate, wait, then kill the process group; idempotent."""
        process, self._process = self._process, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=self.stop_timeout_s)
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def kill(self) -> None:
        """Die at once by SIGKILL to the process group, as a crashed Triton would; idempotent.

        The port is kept: a later ``start()`` listens on the same one.
        """
        process, self._process = self._process, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if process is not None:
            _kill_group(process)
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# --- A decoupled model for ModelStreamInfer (tests/e2e/test_streaming.py) ---------------------

TOKENS_MODEL = "tokens"

# Streams ``count`` responses per request, each tagged with its version: response i carries
# ``index`` = i and ``version`` = the model version. ``fail_at`` (optional) >= 0 makes response
# number ``fail_at`` an error instead (a mid-stream failure); while the config's fail file for
# this version exists, the very first response is an error (a candidate failing before its first
# response).
TOKENS_MODEL_PY = '''\
"""A decoupled model that streams numbered responses (written by the test harness)."""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.version = int(args["model_version"])
        fail = config["parameters"].get("fail_file_v" + args["model_version"], {})
        self.fail_file = fail.get("string_value", "")

    def execute(self, requests):
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for request in requests:
            sender = request.get_response_sender()
            if self.fail_file and os.path.exists(self.fail_file):
                error = pb_utils.TritonError("injected failure before the first response")
                sender.send(pb_utils.InferenceResponse(error=error), flags=final)
                continue
            count = int(pb_utils.get_input_tensor_by_name(request, "count").as_numpy().ravel()[0])
            fail_at = pb_utils.get_input_tensor_by_name(request, "fail_at")
            fail_at = -1 if fail_at is None else int(fail_at.as_numpy().ravel()[0])
            for i in range(count):
                if i == fail_at:
                    error = pb_utils.TritonError(f"injected failure at response {i}")
                    sender.send(pb_utils.InferenceResponse(error=error))
                    break
                tensors = [
                    pb_utils.Tensor("index", np.array([i], np.int32)),
                    pb_utils.Tensor("version", np.array([self.version], np.int32)),
                ]
                sender.send(pb_utils.InferenceResponse(output_tensors=tensors))
            sender.send(flags=final)
        return None
'''

TOKENS_CONFIG_PBTXT = """\
# Test-only decoupled model: streams `count` responses per request (tests/triton_harness.py).
name: "{name}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
version_policy: {{ specific: {{ versions: [{versions}] }} }}
input [
  {{ name: "count" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "fail_at" data_type: TYPE_INT32 dims: [ 1 ] optional: true }}
]
output [
  {{ name: "index" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "version" data_type: TYPE_INT32 dims: [ 1 ] }}
]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""


def build_tokens_repository(
    dest: Path,
    versions: Sequence[int] = (1, 2),
    *,
    fail_files: Mapping[int, Path] | None = None,
) -> Path:
    """Write ``dest/tokens``: the decoupled streaming model for ``versions``; ``fail_files``
    makes a version fail before its first response while that file exists."""
    model_dir = dest / TOKENS_MODEL
    for version in versions:
        (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
        (model_dir / str(version) / "model.py").write_text(TOKENS_MODEL_PY)
    (model_dir / "config.pbtxt").write_text(
        TOKENS_CONFIG_PBTXT.format(name=TOKENS_MODEL, versions=", ".join(str(v) for v in versions))
        + "".join(
            f'parameters {{ key: "fail_file_v{v}" value: {{ string_value: "{f}" }} }}\n'
            for v, f in (fail_files or {}).items()
        )
    )
    return dest
