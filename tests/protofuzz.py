"""Hypothesis strategies for protobuf messages, built from their descriptors (no per-message code).

:func:`messages` fills any message type with random field values: scalars across their whole
range (NaN and infinities included), strings biased towards the names the sidecar knows (so a
fuzzed request gets past the first check and reaches deeper code), repeated and map fields, nested
messages up to a depth. :func:`mutations` flips, inserts, deletes and truncates bytes of a valid
serialized message. :func:`wire_payloads` mixes both with raw random bytes.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

MAX_DEPTH = 3
MAX_REPEATED = 3
# Names that mean something to the sidecar: the model, its versions, tensor names and types,
# service names. Mixed with arbitrary text.
KNOWN_WORDS = (
    "",
    "digits",
    "1",
    "2",
    "0",
    "pixels",
    "label",
    "probabilities",
    "FP32",
    "INT64",
    "BYTES",
    "control",
    "candidate",
    "user-1",
    "inference.GRPCInferenceService",
    "trafficsplit.v1.TrafficSplit",
)
C = FieldDescriptor

_INT_RANGES = {
    C.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    C.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    C.CPPTYPE_UINT32: (0, 2**32 - 1),
    C.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def _small_or_any(low: int, high: int) -> st.SearchStrategy[int]:
    """Mostly small numbers (shapes, indexes, versions), sometimes the extremes."""
    return st.one_of(st.integers(-2, 70).filter(lambda n: low <= n <= high), st.integers(low, high))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.cpp_type
    if kind in _INT_RANGES:
        return _small_or_any(*_INT_RANGES[kind])
    if kind == C.CPPTYPE_DOUBLE:
        return st.floats()
    if kind == C.CPPTYPE_FLOAT:
        return st.floats(width=32)
    if kind == C.CPPTYPE_BOOL:
        return st.booleans()
    if kind == C.CPPTYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    if field.type == C.TYPE_BYTES:
        return st.binary(max_size=300)
    return st.one_of(st.sampled_from(KNOWN_WORDS), st.text(max_size=20))


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.cpp_type == C.CPPTYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    return _scalar(field)


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.cpp_type == C.CPPTYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
        and field.is_repeated
    )


def _assign(message: Message, field: FieldDescriptor, value: Any) -> None:
    target = getattr(message, field.name)
    if _is_map(field):
        value_field = field.message_type.fields_by_name["value"]
        for key, item in value:
            if value_field.cpp_type == C.CPPTYPE_MESSAGE:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        if field.cpp_type == C.CPPTYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.cpp_type == C.CPPTYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


def _field_strategy(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if _is_map(field):
        entry = field.message_type
        key = _scalar(entry.fields_by_name["key"])
        return st.lists(
            st.tuples(key, _value(entry.fields_by_name["value"], depth)), max_size=MAX_REPEATED
        )
    if field.is_repeated:
        return st.lists(_value(field, depth), max_size=MAX_REPEATED)
    return _value(field, depth)


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Random instances of the message type ``descriptor`` describes."""
    cls = GetMessageClass(descriptor)
    if depth >= MAX_DEPTH:
        return st.just(cls())
    optional = {f.name: _field_strategy(f, depth) for f in descriptor.fields}

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            _assign(message, descriptor.fields_by_name[name], value)
        return message

    return st.fixed_dictionaries({}, optional=optional).map(build)


@st.composite
def mutations(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few random edits: flip, insert, delete, truncate."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "insert", "delete", "truncate")))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


def wire_payloads(descriptor: Descriptor, seed: bytes) -> st.SearchStrategy[bytes]:
    """What a fuzzed request body is: random bytes, a random valid message, or a mutated seed."""
    return st.one_of(
        st.binary(max_size=256),
        messages(descriptor).map(lambda m: m.SerializeToString()),
        mutations(seed),
    )
