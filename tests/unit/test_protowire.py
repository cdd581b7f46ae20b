"""Framing rules of sidecar.protowire, each pinned against the real (upb) parser.

Every case states what upb does with the bytes *and* checks it, so a protobuf upgrade that changes
a rule fails here, naming the rule, instead of letting the wire reader drift from the parser.
"""

from __future__ import annotations

import pytest
from tritonclient.grpc import service_pb2 as kserve

from sidecar import protowire, wire

ZERO_IN = {n: b"\x80" * (n - 1) + b"\x00" for n in range(1, 12)}  # 0 as an n-byte varint


def parser_accepts(raw: bytes) -> bool:
    try:
        kserve.ModelInferRequest.FromString(raw)
    except Exception:  # upb raises DecodeError; anything else counts as a refusal too
        return False
    return True


def framing_accepts(raw: bytes) -> bool:
    try:
        list(protowire.fields(raw))
    except protowire.FramingError:
        return False
    return True


ACCEPTED = {
    "5-byte tag": b"\x88\x80\x80\x80\x00\x01",
    "largest field number": b"\xf8\xff\xff\xff\x0f\x01",
    "5-byte length": b"\x3a" + ZERO_IN[5],
    "10-byte varint": b"\x48" + ZERO_IN[10],
    "bits past the 64th of a varint are ignored": b"\x48" + b"\xff" * 9 + b"\x7f",
    "unknown group": b"\x4b\x08\x01\x4c",
    "nested groups": b"\x4b\x53\x54\x4c",
    "field 0 inside an unknown group": b"\x4b\x00\x00\x02\x00\x03\x04\x4c",
    "group of a field number that exists with another type": b"\x0b\x0c",
    "complete fixed32 and fixed64": b"\x4d" + bytes(4) + b"\x49" + bytes(8),
    "wrong wire type for a known field": b"\x08\x01\x3d" + bytes(4),
}
REJECTED = {
    "6-byte tag": b"\x88\x80\x80\x80\x80\x00\x01",
    "tag over 32 bits": b"\x88\x80\x80\x80\x10\x01",
    "field number 0": b"\x00\x00",
    "group of field 0": b"\x03\x04",
    "wire type 6": b"\x0e",
    "wire type 7": b"\x0f",
    "end of group at the top level": b"\x0a\x01a\x0c",
    "group never closed": b"\x4b\x08\x01",
    "group closed by another field": b"\x4b\x54",
    "crossed groups": b"\x4b\x53\x4c\x54",
    "6-byte length": b"\x3a" + ZERO_IN[6],
    "11-byte varint": b"\x48" + ZERO_IN[11],
    "truncated varint": b"\x48\xff",
    "truncated tag": b"\x88",
    "length past the end": b"\x3a\x05abc",
    "length past the end of a group": b"\x4b\x0a\x05\x4c",
    "truncated fixed32": b"\x4d\x00\x00\x00",
    "truncated fixed64": b"\x49" + bytes(7),
    "fixed32 swallowing the end of its group": b"\x4b\x0d\x00\x00\x00\x4c",
    "6-byte tag inside a group": b"\x4b\x88\x80\x80\x80\x80\x00\x00\x4c",
}


@pytest.mark.parametrize("raw", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_framing_that_upb_accepts_is_accepted(raw: bytes) -> None:
    assert parser_accepts(raw), "upb's rule changed: update sidecar/protowire.py"
    assert framing_accepts(raw)
    wire.read_request_header(raw)  # does not raise


@pytest.mark.parametrize("raw", REJECTED.values(), ids=REJECTED.keys())
def test_framing_that_upb_rejects_is_rejected(raw: bytes) -> None:
    assert not parser_accepts(raw), "upb's rule changed: update sidecar/protowire.py"
    assert not framing_accepts(raw)
    with pytest.raises(wire.WireError, match="malformed ModelInferRequest"):
        wire.read_request_header(raw)


def test_group_nesting_depth_is_left_to_the_parser() -> None:
    # upb allows 100 nested groups and refuses 101; the framing walk accepts both, and the wire
    # reader agrees with upb because the group reaches the parser whole.
    for depth, accepted in ((100, True), (101, False)):
        raw = b"\x4b" * depth + b"\x4c" * depth
        assert parser_accepts(raw) is accepted
        assert framing_accepts(raw)
        if accepted:
            wire.read_request_header(raw)
        else:
            with pytest.raises(wire.WireError):
                wire.read_request_header(raw)


def test_fields_reports_boundaries_and_group_extent() -> None:
    raw = b"\x0a\x02ab" + b"\x4b\x08\x01\x4c" + b"\x3a\x81\x01" + bytes(129)
    assert list(protowire.fields(raw)) == [
        (1, protowire.LEN, 0, 2, 4),
        (9, protowire.START_GROUP, 4, 5, 8),
        (7, protowire.LEN, 8, 11, 140),
    ]


def test_errors_name_the_offset() -> None:
    with pytest.raises(
        protowire.FramingError, match="field 7: length at offset 5 runs past the end"
    ):
        list(protowire.fields(b"\x0a\x02ab\x3a\x05abc"))
