"""Protobuf framing, exactly as strict as the upb parser behind ``Message.FromString``.

This module walks field boundaries; it never interprets a field's contents. Its one promise is
about *framing*: it rejects a tag, varint, length or group exactly when upb (protobuf >= 4.21,
the Python default) would, so a caller may cut fields out of a message and hand the rest to the
real parser without ever accepting what the parser would refuse (see :mod:`sidecar.wire`).

The upb rules mirrored here, each pinned by a test in tests/unit/test_protowire.py:

- a tag is a varint of at most 5 bytes whose value fits in 32 bits (so the largest field
  number is 2**29 - 1); field number 0 is corrupt in a message, but upb lets it pass inside an
  unknown group, and so does :func:`skip_value`;
- wire types 6 and 7 are corrupt; an end-group tag must close the innermost open group of the
  same field number (one at the top level is corrupt);
- a varint value takes at most 10 bytes; bits past the 64th are ignored, not an error;
- a length prefix is a varint of at most 5 bytes and must not run past the end of the buffer;
- fixed32 / fixed64 values must be complete.

Group nesting depth is *not* checked here: groups are never cut out, so the parser sees every
group and enforces its own depth limit.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT, FIXED64, LEN, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
_TAG_MAX_BYTES = 5
_LENGTH_MAX_BYTES = 5
_VARINT_MAX_BYTES = 10
_FIXED_SIZE = {FIXED64: 8, FIXED32: 4}

Buffer = bytes | memoryview


class FramingError(ValueError):
    """The bytes are not protobuf wire format (the parser would say "wire format was corrupt")."""


def read_varint(buf: Buffer, pos: int, max_bytes: int = _VARINT_MAX_BYTES) -> tuple[int, int]:
    """The varint at ``pos`` (at most ``max_bytes`` long) and the position after it."""
    result = shift = 0
    start = pos
    limit = min(len(buf), pos + max_bytes)
    while pos < limit:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & 0xFFFF_FFFF_FFFF_FFFF, pos
        shift += 7
    if pos - start == max_bytes:
        raise FramingError(f"varint longer than {max_bytes} bytes at offset {start}")
    raise FramingError(f"truncated varint at offset {start}")


def read_tag(buf: Buffer, pos: int) -> tuple[int, int, int]:
    """(field number, wire type, position after the tag)."""
    start = pos
    tag, pos = read_varint(buf, pos, _TAG_MAX_BYTES)
    if tag > 0xFFFF_FFFF:
        raise FramingError(f"tag at offset {start} does not fit in 32 bits")
    number, wire_type = tag >> 3, tag & 7
    if wire_type > FIXED32:
        raise FramingError(f"wire type {wire_type} at offset {start} does not exist")
    return number, wire_type, pos


def skip_value(buf: Buffer, pos: int, number: int, wire_type: int) -> tuple[int, int]:
    """(payload start, end) of the value at ``pos``; for LEN the payload without its prefix,
    for a group everything up to and including its end-group tag."""
    if wire_type == VARINT:
        _, end = read_varint(buf, pos)
        return pos, end
    if wire_type == LEN:
        length, start = read_varint(buf, pos, _LENGTH_MAX_BYTES)
        if length > len(buf) - start:
            raise FramingError(f"field {number}: length at offset {pos} runs past the end")
        return start, start + length
    if wire_type == START_GROUP:
        return pos, _skip_group(buf, pos, number)
    if wire_type == END_GROUP:
        raise FramingError(f"end of group {number} at offset {pos} without a start")
    end = pos + _FIXED_SIZE[wire_type]
    if end > len(buf):
        raise FramingError(f"fixed-size field {number} at offset {pos} is truncated")
    return pos, end


def _skip_group(buf: Buffer, pos: int, number: int) -> int:
    """The position after the end-group tag that closes group ``number`` opened before ``pos``.

    Iterative, with an explicit stack of open groups: nesting depth costs no Python recursion.
    """
    open_groups = [number]
    size = len(buf)
    while open_groups:
        if pos >= size:
            raise FramingError(f"group {open_groups[-1]} is not closed")
        inner, wire_type, pos = read_tag(buf, pos)
        if wire_type == START_GROUP:
            open_groups.append(inner)
        elif wire_type == END_GROUP:
            if inner != open_groups.pop():
                raise FramingError(f"end of group {inner} at offset {pos} closes another group")
        else:
            _, pos = skip_value(buf, pos, inner, wire_type)
    return pos


def fields(buf: Buffer) -> Iterator[tuple[int, int, int, int, int]]:
    """Top-level fields in order: (field number, wire type, tag start, value start, value end).

    Raises :class:`FramingError` where the framing is corrupt; fields before it are yielded.
    """
    pos, size = 0, len(buf)
    while pos < size:
        tag_start = pos
        key = buf[pos]
        # Fast path, taken by every field of a typical request: a one-byte tag (fields 1 to 15)
        # of a length-delimited field. Anything else takes the general path.
        if key & 7 == LEN and 8 <= key < 0x80:
            start = pos + 2
            length = buf[pos + 1] if start <= size else 0x80
            if length >= 0x80:
                length, start = read_varint(buf, pos + 1, _LENGTH_MAX_BYTES)
            pos = start + length
            if pos > size:
                raise FramingError(
                    f"field {key >> 3}: length at offset {tag_start + 1} runs past the end"
                )
            yield key >> 3, LEN, tag_start, start, pos
            continue
        number, wire_type, pos = read_tag(buf, pos)
        if number == 0:
            raise FramingError(f"field number 0 at offset {tag_start}")
        start, pos = skip_value(buf, pos, number, wire_type)
        yield number, wire_type, tag_start, start, pos
