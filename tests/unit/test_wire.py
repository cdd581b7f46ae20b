"""The wire-level pass-through agrees with the real protobuf parser."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
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


GOOD = request(**{"x-user-id": "u1"}).SerializeToString()
# Bytes the previous hand-written reader judged differently from the parser (issue 7 item 3): the
# first ones it let through to Triton ("Unable to parse request", INTERNAL, blamed on the model),
# the last one it refused although the parser accepts it.
DISAGREED_BEFORE = {
    "field number 0": (GOOD + b"\x00\x00", "Wire format was corrupt"),
    "field 0 inside a non-string parameter value": (
        GOOD + bytes.fromhex("2209 0a0173 1204 0801 0000".replace(" ", "")),
        "Wire format was corrupt",
    ),
    "field 0 inside a parameters entry": (
        GOOD + bytes.fromhex("2205 0a0173 0000".replace(" ", "")),
        "Wire format was corrupt",
    ),
    "id that is not UTF-8": (GOOD + b"\x1a\x01\xff", "String field had bad UTF-8"),
    "output name that is not UTF-8": (
        GOOD + bytes.fromhex("3203 0a01ff".replace(" ", "")),
        "String field had bad UTF-8",
    ),
    "6-byte length": (GOOD + b"\x4a\x80\x80\x80\x80\x80\x00", "Wire format was corrupt"),
    "6-byte tag": (GOOD + b"\xca\x80\x80\x80\x80\x00\x00", "Wire format was corrupt"),
}


@pytest.mark.parametrize(("raw", "reason"), DISAGREED_BEFORE.values(), ids=DISAGREED_BEFORE.keys())
def test_what_the_parser_rejects_is_rejected_with_its_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError):
        kserve.ModelInferRequest.FromString(raw)
    with pytest.raises(wire.WireError) as caught:
        wire.read_request_header(raw)
    message = str(caught.value)
    assert message.startswith("malformed ModelInferRequest: ") and "\n" not in message
    assert reason.lower() in message.lower() or "offset" in message


def test_an_unknown_group_the_parser_accepts_is_accepted() -> None:
    raw = GOOD + b"\x4b\x08\x01\x4c"  # field 9, a group; the previous reader refused it
    assert wire.read_request_header(raw) == expected_header(
        kserve.ModelInferRequest.FromString(raw)
    )


def test_the_tensor_payload_is_not_parsed_or_copied() -> None:
    # A 4 MiB tensor whose bytes happen to be corrupt protobuf: the header is still read, because
    # only the top-level framing of raw_input_contents is looked at (its length prefix).
    big = kserve.ModelInferRequest(model_name="digits")
    big.inputs.add(name="pixels", datatype="UINT8").shape.extend([4 << 20])
    big.raw_input_contents.append(b"\x0f" * (4 << 20))
    header = wire.read_request_header(big.SerializeToString())
    assert header.raw_input_sizes == (4 << 20,)
    assert header.inputs == (InputSpec("pixels", "UINT8", (4 << 20,)),)


# --- The wire reader against the parser on generated and mutated requests. ---------------------

TEXT = st.text(max_size=12)
DATATYPES = st.sampled_from(["FP32", "INT64", "BYTES", "UINT8", "", "fp32"])
PARAMETER = st.one_of(
    st.tuples(st.just("bool_param"), st.booleans()),
    st.tuples(st.just("int64_param"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("string_param"), TEXT),
    st.tuples(st.just("double_param"), st.floats(allow_nan=False)),
    st.tuples(st.just("uint64_param"), st.integers(0, 2**64 - 1)),
)
PARAMETERS = st.dictionaries(TEXT, PARAMETER, max_size=3)


def _request(
    name: str,
    version: str,
    request_id: str,
    parameters: dict[str, tuple[str, object]],
    inputs: Sequence[tuple[str, str, Sequence[int], dict[str, tuple[str, object]]]],
    outputs: Sequence[str],
    raw_inputs: Sequence[bytes],
) -> bytes:
    """A request as tritonclient (or any protobuf library) would serialize it."""
    message = kserve.ModelInferRequest(model_name=name, model_version=version, id=request_id)
    _set_parameters(message.parameters, parameters)
    for input_name, datatype, shape, input_parameters in inputs:
        tensor = message.inputs.add(name=input_name, datatype=datatype)
        tensor.shape.extend(shape)
        _set_parameters(tensor.parameters, input_parameters)
    for output in outputs:
        message.outputs.add(name=output)
    message.raw_input_contents.extend(raw_inputs)
    return bytes(message.SerializeToString())


def _set_parameters(target: Any, parameters: dict[str, tuple[str, object]]) -> None:
    """``target`` is a protobuf map of InferParameter (no common type to name in the stubs)."""
    for key, (kind, value) in parameters.items():
        setattr(target[key], kind, value)


REQUESTS = st.builds(
    _request,
    name=st.sampled_from(["digits", ""]) | TEXT,
    version=st.sampled_from(["", "1", "2"]) | TEXT,
    request_id=TEXT,
    parameters=PARAMETERS,
    inputs=st.lists(
        st.tuples(
            TEXT, DATATYPES, st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3), PARAMETERS
        ),
        max_size=2,
    ),
    outputs=st.lists(TEXT, max_size=2),
    raw_inputs=st.lists(st.binary(max_size=40), max_size=2),
)


def _varint(value: int, padding: int = 0) -> bytes:
    """``value`` as a varint, made ``padding`` bytes longer than needed (still the same value)."""
    out = bytearray()
    while value >= 0x80 or padding:
        if value < 0x80:
            padding -= 1
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@st.composite
def _field(draw: st.DrawFn, depth: int = 0) -> bytes:
    """One field of any shape, well or badly framed: the parser's corner cases, not KServe's."""
    number = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 7, 9, 16, 2**29 - 1, 2**29]))
    wire_type = draw(st.integers(0, 7))
    padding = draw(st.sampled_from([0, 0, 0, 1, 4, 5]))
    tag = _varint((number << 3 | wire_type) & (2**35 - 1), padding)
    if wire_type == 0:
        return tag + _varint(draw(st.integers(0, 2**64 - 1)), draw(st.sampled_from([0, 1, 9])))
    if wire_type in (1, 5):
        return tag + bytes(draw(st.sampled_from([8, 4, 3])))
    if wire_type == 2:
        payload = draw(
            st.binary(max_size=6)
            | st.sampled_from([b"abc", b"\xff"])
            | st.lists(_field(depth + 1), max_size=2 if depth < 3 else 0).map(b"".join)
        )
        size = max(0, len(payload) + draw(st.sampled_from([0, 0, 0, 1, -1])))
        return tag + _varint(size, draw(st.sampled_from([0, 0, 1, 4, 5]))) + payload
    if wire_type == 3:
        inner = draw(st.lists(_field(depth + 1), max_size=2 if depth < 3 else 0))
        closing = draw(st.sampled_from([number, number, number, number + 1]))
        return tag + b"".join(inner) + _varint(closing << 3 | 4)
    return tag  # an end-group tag, or wire type 6 / 7


FIELDS = st.lists(_field(), min_size=1, max_size=4).map(b"".join)
POSITION = st.integers(0, 1 << 16)  # taken modulo the length, so every offset is reachable
Mutation = tuple[str, int, int | bytes]
MUTATION: st.SearchStrategy[Mutation] = st.one_of(
    st.tuples(st.just("flip"), POSITION, st.integers(0, 7)),
    st.tuples(st.just("truncate"), POSITION, st.just(0)),
    st.tuples(st.just("insert"), POSITION, st.binary(min_size=1, max_size=6)),
    st.tuples(st.just("delete"), POSITION, st.integers(1, 6)),
    st.tuples(st.just("splice"), POSITION, FIELDS),
)


def mutate(raw: bytes, mutations: Sequence[Mutation]) -> bytes:
    """Bit flips, truncations, inserted or deleted bytes, and spliced-in fields, in order."""
    data = bytearray(raw)
    for kind, position, arg in mutations:
        at = position % (len(data) + 1)
        if isinstance(arg, bytes):  # insert / splice
            data[at:at] = arg
        elif kind == "flip" and at < len(data):
            data[at] ^= 1 << arg
        elif kind == "truncate":
            del data[at:]
        elif kind == "delete":
            del data[at : at + arg]
    return bytes(data)


def expected_header(message: kserve.ModelInferRequest) -> wire.RequestHeader:
    """What the header must say, read off the message the real parser produced."""
    return wire.RequestHeader(
        message.model_name,
        message.model_version,
        frozenset(message.parameters),
        {
            key: value.string_param
            for key, value in message.parameters.items()
            if value.HasField("string_param")
        },
        tuple(InputSpec(t.name, t.datatype, tuple(t.shape)) for t in message.inputs),
        tuple(len(raw) for raw in message.raw_input_contents),
    )


def assert_agrees_with_the_parser(raw: bytes) -> None:
    try:
        message = kserve.ModelInferRequest.FromString(raw)
    except DecodeError:
        with pytest.raises(wire.WireError, match="malformed ModelInferRequest"):
            wire.read_request_header(raw)
        return
    assert wire.read_request_header(raw) == expected_header(message)


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(raw=REQUESTS)
def test_well_formed_requests_read_as_the_parser_reads_them(raw: bytes) -> None:
    assert_agrees_with_the_parser(raw)


@FAST
@given(raw=REQUESTS, mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_requests_are_rejected_exactly_when_the_parser_rejects_them(
    raw: bytes, mutations: list[Mutation]
) -> None:
    assert_agrees_with_the_parser(mutate(raw, mutations))


@FAST
@given(prefix=REQUESTS, soup=FIELDS, suffix=REQUESTS)
def test_odd_fields_between_requests_are_judged_as_the_parser_judges_them(
    prefix: bytes, soup: bytes, suffix: bytes
) -> None:
    assert_agrees_with_the_parser(prefix + soup + suffix)


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
