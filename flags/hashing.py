"""Sticky bucketing: the same (salt, flag, user) lands in the same bucket on every machine.

Compatible with flagd's fractional evaluation: an unsigned 32-bit MurmurHash3 (seed 0) of
``salt + flag_key + user_id`` mapped onto ``[0, total)`` by ``(h * total) >> 32``. With an empty
salt the hashed string is flagd's default ``flagKey + targetingKey``, so OpenFeature SDKs in other
languages compute the same split. Coverage uses an independent hash (another seed) so that who is
in the experiment is uncorrelated with which variant they get.
"""

from __future__ import annotations

import mmh3

# Shares are stored as integer parts per million: 0.0001 % resolution, exact integer arithmetic.
PPM = 1_000_000
COVERAGE_SEED = 0x7472_6166  # "traf": any fixed seed other than 0 gives an independent hash


def split_hash(salt: str, flag_key: str, user_id: str) -> int:
    """Unsigned 32-bit hash that picks the variant (flagd-compatible when ``salt`` is empty)."""
    return mmh3.hash(salt + flag_key + user_id, 0, False)


def coverage_hash(salt: str, flag_key: str, user_id: str) -> int:
    """Unsigned 32-bit hash that decides whether the user is in the experiment at all."""
    return mmh3.hash(salt + flag_key + user_id, COVERAGE_SEED, False)


def bucket(h: int, total: int = PPM) -> int:
    """Map a 32-bit hash onto ``[0, total)`` without modulo bias (flagd's formula)."""
    return (h * total) >> 32


def percent_to_ppm(percent: float) -> int:
    """0.0001 %-resolution integer share; rounding keeps 33.3333 % + 66.6667 % == 100 %."""
    return round(percent * (PPM // 100))
