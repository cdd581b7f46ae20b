"""The in-process client's pure parts: tensors in and out, settings, the error tree."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from support import ROOT
from tritonclient.grpc import service_pb2 as kserve

from inproc import ConfigurationError, InProcessClient, InvalidInput
from inproc.errors import BackendFailure, RoutingError, translate
from inproc.tensors import build_request, decode_outputs
from sidecar.backends.base import BackendError, ErrorKind
from sidecar.errors import InvalidRequest, NoFlag, Overloaded


def test_a_dict_of_arrays_becomes_raw_tensors_with_kserve_datatypes() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    ids = np.array([7, 8], dtype=np.int64)
    words = np.array([b"ab", b"c"], dtype=np.object_)
    request = build_request("m", {"x": x, "ids": ids, "words": words}, outputs=["y"],
                            parameters={"p": 3, "q": "s", "r": True})  # fmt: skip
    assert [(i.name, i.datatype, list(i.shape)) for i in request.inputs] == [
        ("x", "FP32", [2, 3]), ("ids", "INT64", [2]), ("words", "BYTES", [2])]  # fmt: skip
    assert request.raw_input_contents[0] == x.tobytes()
    assert request.raw_input_contents[1] == ids.tobytes()
    assert request.raw_input_contents[2] == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"
    assert [o.name for o in request.outputs] == ["y"]
    assert request.parameters["p"].int64_param == 3
    assert request.parameters["q"].string_param == "s"
    assert request.parameters["r"].bool_param is True
    assert (request.model_name, request.model_version) == ("m", "")


def test_a_non_contiguous_array_is_sent_in_logical_order() -> None:
    x = np.arange(6, dtype=np.int32).reshape(2, 3).T  # Fortran order
    request = build_request("m", {"x": x})
    assert np.frombuffer(request.raw_input_contents[0], np.int32).tolist() == [0, 3, 1, 4, 2, 5]


def test_a_big_endian_array_is_sent_little_endian() -> None:
    x = np.array([1.0, 2.0], dtype=">f4")
    request = build_request("m", {"x": x})
    assert request.inputs[0].datatype == "FP32"
    assert request.raw_input_contents[0] == np.array([1.0, 2.0], "<f4").tobytes()


def test_tritonclient_infer_inputs_are_sent_as_tritonclient_would() -> None:
    tensor = triton.InferInput("pixels", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.array([[1.5, 2.5]], np.float32))
    request = build_request("digits", [tensor], version="2")
    assert request.inputs[0] == tensor._get_tensor()
    assert request.raw_input_contents[0] == np.array([1.5, 2.5], np.float32).tobytes()
    assert request.model_version == "2"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": [1, 2]}, "input 'x' is a list; pass a numpy array"),
        ({"x": np.array([1 + 2j])}, "numpy dtype complex128, which KServe-v2 has no datatype"),
        ({}, "no inputs for model 'm'"),
        ("x", "inputs must be a dict of name -> numpy array or a list"),
        ([np.zeros(2)], "inputs hold a ndarray; pass tritonclient.grpc.InferInput"),
        ([triton.InferInput("x", [1], "FP32")], "input 'x' has no data: call set_data_from_numpy"),
    ],
)
def test_bad_inputs_say_what_to_fix(inputs: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        build_request("m", inputs)
    assert message in caught.value.message
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_bad_parameters_and_model_names_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="parameter 'p' is a list"):
        build_request("m", {"x": np.zeros(1)}, parameters={"p": [1]})  # type: ignore[dict-item]
    with pytest.raises(InvalidInput, match="model must be a non-empty string"):
        build_request("", {"x": np.zeros(1)})


def test_outputs_decode_to_arrays_of_their_shape() -> None:
    response = kserve.ModelInferResponse(model_name="m", model_version="1")
    response.outputs.add(name="label", datatype="INT64", shape=[2, 1])
    response.raw_output_contents.append(np.array([4, 9], np.int64).tobytes())
    response.outputs.add(name="words", datatype="BYTES", shape=[1])
    response.raw_output_contents.append(b"\x02\x00\x00\x00hi")
    response.outputs.add(name="bf", datatype="BF16", shape=[1])
    response.raw_output_contents.append(b"\x80\x3f")
    out = decode_outputs(response)
    assert out["label"].tolist() == [[4], [9]] and out["label"].dtype == np.int64
    assert out["words"].tolist() == [b"hi"]
    assert out["bf"].tolist() == [1.0] and out["bf"].dtype == np.float32  # widened


def test_outputs_that_do_not_fit_their_shape_are_refused() -> None:
    response = kserve.ModelInferResponse()
    response.outputs.add(name="y", datatype="FP32", shape=[2])
    response.raw_output_contents.append(b"\x00" * 7)
    with pytest.raises(ValueError):
        decode_outputs(response)


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [
        (InvalidRequest("bad"), InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
        (NoFlag("none"), RoutingError, grpc.StatusCode.FAILED_PRECONDITION),
        (Overloaded("busy"), RoutingError, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (
            BackendError(ErrorKind.UNAVAILABLE, "down", backend="triton"),
            BackendFailure,
            grpc.StatusCode.UNAVAILABLE,
        ),
        (
            BackendError(ErrorKind.INVALID_ARGUMENT, "shape", backend="triton"),
            InvalidInput,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            BackendError(ErrorKind.DEADLINE_EXCEEDED, "slow", backend="triton"),
            BackendFailure,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ),
    ],
)
def test_errors_keep_the_sidecars_status(error: Exception, kind: type, code: Any) -> None:
    translated = translate(error)
    assert type(translated) is kind
    assert translated.code is code
    assert str(translated).startswith(f"{code.name}: ")


def test_settings_that_do_not_exist_or_parse_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown setting\(s\) \['redis'\]"):
        InProcessClient.from_settings(redis="redis://x")
    with pytest.raises(ConfigurationError, match="--backend takes NAME=HOST:PORT"):
        InProcessClient.from_settings(backend="nonsense")
    with pytest.raises(ConfigurationError, match="unflagged='maybe': choose from"):
        InProcessClient.from_settings(unflagged="maybe")


def test_one_client_per_prometheus_registry() -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    InProcessClient.from_settings(registry=registry)
    with pytest.raises(ConfigurationError, match="one client per Prometheus registry"):
        InProcessClient.from_settings(registry=registry)


def test_settings_take_strings_for_paths_and_repeatables() -> None:
    flags = ROOT / "deploy" / "flags" / "digits.json"
    client = InProcessClient.from_settings(flags_file=str(flags), stable="other=3")
    assert client.settings.flags_file == flags
    assert client.settings.stable_versions() == {"other": "3"}


def test_nothing_the_sidecar_or_the_cores_import_depends_on_inproc() -> None:
    import ast

    offenders = []
    for package in ("flags", "signals", "sidecar", "experiments", "rollout"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                offenders += [f"{path}: {n}" for n in names if n.split(".")[0] == "inproc"]
    assert offenders == []
