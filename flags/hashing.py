"""Sticky bucketing: the same (salt, flag, user) lands in the same bucket on every machine.

Compatible with flagd's fractional evaluation: an unsigned 32-bit MurmurHash3 (seed 0) of
``salt + flag_key + user_id`` mapped onto ``[0, total)`` by ``(h * total) >> 32``. With an empty
salt the hashed string is flagd's default ``flagKey + targetingKey``, so OpenFeature SDKs in other
languages compute the same split. Coverage uses an independent hash (another seed) so that who is
in the experiment is uncorrelated with which variant they get.

Two split hashes, chosen per flag by its ``hashing`` field (docs/flags.md, "Hashing"):

* ``legacy`` (a document without the field): the string above, flagd's fractional before v3.
* ``flagd-v3``: flagd's current specification hashes the canonical CBOR encoding of
  ``[flagKey, targetingKey]``. With a salt there is no such shorthand in flagd, so the salted form
  is the CBOR text string ``salt + flagKey + targetingKey``: what flagd v3 hashes for the bucketBy
  expression ``{"cat": [salt, {"var": "$flagd.flagKey"}, {"var": "targetingKey"}]}``.

The CBOR here is written by hand: only text strings and a two-element array occur, whose canonical
encodings are fixed (RFC 8949 4.2.1), so everything but the user id's part is precomputed per flag.
"""

from __future__ import annotations

from typing import Final, Literal

import mmh3

# Shares are stored as integer parts per million: 0.0001 % resolution, exact integer arithmetic.
PPM = 1_000_000
COVERAGE_SEED = 0x7472_6166  # "traf": any fixed seed other than 0 gives an independent hash


HashingMode = Literal["legacy", "flagd-v3"]
LEGACY: Final = "legacy"
FLAGD_V3: Final = "flagd-v3"
# What `flagctl apply` writes into a flag created without the field (the current flagd spec).
CURRENT_HASHING: Final = FLAGD_V3


def split_hash(salt: str, flag_key: str, user_id: str, hashing: HashingMode = LEGACY) -> int:
    """Unsigned 32-bit hash that picks the variant (flagd-compatible when ``salt`` is empty)."""
    if hashing == FLAGD_V3:
        head, base, tail = v3_parts(salt, flag_key)
        return mmh3.hash(v3_key(head, base, tail, user_id), 0, False)
    return mmh3.hash(salt + flag_key + user_id, 0, False)


# Canonical CBOR heads of text strings (major type 3) up to 255 bytes: the common user id lengths.
_TEXT_HEADS: Final = tuple(bytes((0x60 + n,)) if n < 24 else bytes((0x78, n)) for n in range(256))
_ARRAY_OF_TWO: Final = b"\x82"


def cbor_text_head(length: int) -> bytes:
    """The canonical (shortest) CBOR head of a text string of ``length`` UTF-8 bytes."""
    if length < 256:
        return _TEXT_HEADS[length]
    if length < 1 << 16:
        return b"\x79" + length.to_bytes(2, "big")
    if length < 1 << 32:
        return b"\x7a" + length.to_bytes(4, "big")
    return b"\x7b" + length.to_bytes(8, "big")


def utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (possible in a Python str, never in gRPC metadata) hashes
    # deterministically instead of raising on the request path.
    return text.encode("utf-8", "surrogatepass")


def v3_parts(salt: str, flag_key: str) -> tuple[bytes, int, bytes]:
    """What a v3 hash input is made of besides the user id: ``head + text_head(base + n) + tail``.

    Unsalted: ``head`` is the array head plus the encoded flag key, ``base`` 0, ``tail`` empty.
    Salted: one text string, so its head counts the prefix's bytes (``base``) and ``tail`` is them.
    """
    if not salt:
        key = utf8(flag_key)
        return _ARRAY_OF_TWO + cbor_text_head(len(key)) + key, 0, b""
    prefix = utf8(salt + flag_key)
    return b"", len(prefix), prefix


def v3_key(head: bytes, base: int, tail: bytes, user_id: str) -> bytes:
    """The bytes flagd v3 hashes for ``user_id`` (``head, base, tail`` from :func:`v3_parts`)."""
    uid = utf8(user_id)
    return head + cbor_text_head(base + len(uid)) + tail + uid


def coverage_hash(salt: str, flag_key: str, user_id: str) -> int:
    """Unsigned 32-bit hash that decides whether the user is in the experiment at all."""
    return mmh3.hash(salt + flag_key + user_id, COVERAGE_SEED, False)


def bucket(h: int, total: int = PPM) -> int:
    """Map a 32-bit hash onto ``[0, total)`` without modulo bias (flagd's formula)."""
    return (h * total) >> 32


def percent_to_ppm(percent: float) -> int:
    """0.0001 %-resolution integer share; rounding keeps 33.3333 % + 66.6667 % == 100 %."""
    return round(percent * (PPM // 100))
