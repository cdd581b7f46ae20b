"""Plain helpers shared by tests (import as ``from support import ...``; conftest is not a module)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import service_pb2 as kserve

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def digits_flag(**overrides: Any) -> dict[str, Any]:
    """The demo flag (deploy/flags/digits.json): control = digits v1, candidate = digits v2."""
    doc = json.loads((ROOT / "deploy" / "flags" / "digits.json").read_text())
    doc.update(overrides)
    return doc


def make_request(
    pixels: npt.NDArray[Any],
    *,
    version: str = "1",
    model: str = "digits",
    outputs: Sequence[str] = (),
    datatype: str = "FP32",
    shape: Sequence[int] | None = None,
    raw: bool = True,
    request_id: str = "",
) -> kserve.ModelInferRequest:
    request = kserve.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    tensor = request.inputs.add(name="pixels", datatype=datatype)
    tensor.shape.extend(pixels.shape if shape is None else shape)
    if raw:
        request.raw_input_contents.append(pixels.tobytes())
    else:
        tensor.contents.fp32_contents.extend(pixels.ravel().tolist())
    for name in outputs:
        request.outputs.add(name=name)
    return request


def decode(response: kserve.ModelInferResponse) -> dict[str, npt.NDArray[Any]]:
    dtypes = {"FP32": np.float32, "INT64": np.int64}
    return {
        out.name: np.frombuffer(raw, dtype=dtypes[out.datatype]).reshape(list(out.shape))
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A Prometheus ``/metrics`` page as {(sample name, sorted labels): value}."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    text = urlopen(url, timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def run_flagctl(
    capsys: Any, *args: str, url: str, prefix: str, actor: str = "ci"
) -> tuple[int, str, str]:
    """flagctl (every registered verb) in this process, fast: no interpreter start per call.
    ``capsys`` is pytest's fixture; returns (exit code, stdout, stderr)."""
    import sys

    from flagctl import main as flagctl_main

    argv = ["flagctl", "--redis-url", url, "--prefix", prefix, "--actor", actor, *args]
    capsys.readouterr()
    old, sys.argv = sys.argv, argv
    try:
        flagctl_main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err
