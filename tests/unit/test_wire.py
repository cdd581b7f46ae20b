"""The wire-level pass-through agrees with the real protobuf parser."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as kserve

from sidecar import wire
from sidecar.tensors import InputSpec


def request(**params: object) -> kserve.ModelInferRequest:
    r = kserve.ModelInferRequest(model_name="digits", model_version="1", id="req-1")
    for key, value in params.items():
        if isinstance(value, str):
            r.parameters[key].string_param = value
        elif isinstance(value, float):
            r.parameters[key].double_param = value
    tensor = r.inputs.add()
    tensor.name, tensor.datatype = "pixels", "FP32"
    tensor.shape.extend([2, 64])
    r.raw_input_contents.append(np.arange(128, dtype=np.float32).tobytes())
    return r


def test_header_is_read_without_the_tensor_payload() -> None:
    header = wire.read_request_header(
        request(**{"x-user-id": "u1", "temperature": 0.5}).SerializeToString()
    )
    assert (header.model_name, header.model_version) == ("digits", "1")
    assert header.parameter_keys == {"x-user-id", "temperature"}
    assert header.string_parameters == {"x-user-id": "u1"}
    assert header.inputs == (InputSpec("pixels", "FP32", (2, 64)),)
    assert header.raw_input_sizes == (512,)


def test_retarget_appends_a_target_that_the_real_parser_honours() -> None:
    original = request(temperature=0.5)
    raw = original.SerializeToString()
    header = wire.read_request_header(raw)
    params = {"note": "mlp", "temperature": 0.9, "seed": -3, "greedy": True}
    merged = kserve.ModelInferRequest.FromString(
        raw + wire.retarget("digits-trt", "2", params, header.parameter_keys)
    )
    assert (merged.model_name, merged.model_version, merged.id) == ("digits-trt", "2", "req-1")
    assert merged.parameters["temperature"].double_param == 0.5  # the caller's value wins
    assert merged.parameters["note"].string_param == "mlp"
    assert merged.parameters["seed"].int64_param == -3
    assert merged.parameters["greedy"].bool_param is True
    assert merged.raw_input_contents == original.raw_input_contents


def test_response_parameters_and_version() -> None:
    raw = kserve.ModelInferResponse(model_name="digits", model_version="2").SerializeToString()
    raw += wire.parameter_entries(
        wire.RESPONSE_PARAMETERS,
        {"trafficsplit.variant": "candidate", "trafficsplit.flag_revision": 7},
    )
    response = kserve.ModelInferResponse.FromString(raw)
    assert wire.read_response_version(raw) == "2"
    assert response.parameters["trafficsplit.variant"].string_param == "candidate"
    assert response.parameters["trafficsplit.flag_revision"].int64_param == 7


@pytest.mark.parametrize(
    "raw", [b"\x0a\x05dig", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x0b"]
)
def test_malformed_requests_raise_a_wire_error(raw: bytes) -> None:
    with pytest.raises(wire.WireError, match="malformed ModelInferRequest"):
        wire.read_request_header(raw)


@given(
    name=st.text(max_size=50),
    version=st.text(max_size=10),
    params=st.dictionaries(
        st.text(max_size=20),
        st.one_of(
            st.text(max_size=20),
            st.integers(-(2**63), 2**63 - 1),
            st.booleans(),
            st.floats(allow_nan=False),
        ),
        max_size=5,
    ),
)
def test_retarget_round_trips_any_target(
    name: str, version: str, params: dict[str, object]
) -> None:
    raw = kserve.ModelInferRequest(model_name="x").SerializeToString()
    merged = kserve.ModelInferRequest.FromString(
        raw + wire.retarget(name, version, params, frozenset())
    )  # type: ignore[arg-type]
    assert (merged.model_name, merged.model_version) == (name, version)
    assert set(merged.parameters) == set(params)
