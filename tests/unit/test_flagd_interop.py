"""Our split hashes against flagd's own ``fractional`` (pinned cores) and flagd-testbed's vectors.

``legacy`` flags must equal openfeature-flagd-core 1.0.0 (the string ``flagKey + targetingKey``),
``flagd-v3`` flags 2.0.0 (canonical CBOR of ``[flagKey, targetingKey]``), user for user, through
the flagd targeting :func:`flags.flagd_interop.fractional_targeting` writes for the flag.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import cbor2
import mmh3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference.flagd_reference import run as flagd_v3_run
from support import ROOT

from flags import CompiledFlag, Subject, parse_flag
from flags.compiled import FlagdV3Flag
from flags.flagd_interop import fractional_targeting
from flags.hashing import FLAGD_V3, LEGACY, bucket, split_hash, v3_key, v3_parts

LEGACY_PYTHON = ROOT / ".venv-flagd-legacy" / "bin" / "python"
SCRIPT = ROOT / "tests" / "reference" / "flagd_reference.py"
KEYS = [f"user-{i}" for i in range(4000)] + [f"ü{i}@例え.jp" for i in range(500)] + ["x" * 300]


def flag(key: str, split: dict[str, float], *, hashing: str, salt: str = "") -> CompiledFlag:
    variants = {name: {"model": "m", "version": str(i + 1)} for i, name in enumerate(split)}
    doc = {
        "key": key,
        "salt": salt,
        "hashing": hashing,
        "variants": variants,
        "default_variant": next(iter(split)),
        "allocation": {"coverage": 100, "split": split},
    }
    return CompiledFlag(parse_flag(doc))


SHAPES = [
    ("digits", {"control": 80, "candidate": 20}, ""),
    ("digits", {"control": 33.3333, "b": 33.3333, "c": 33.3334}, ""),
    ("fraud-model", {"stable": 99.99, "canary": 0.01}, "exp-2"),
    ("llm.chat", {"a": 50, "b": 50}, "é-salt"),
]


def ours(compiled: CompiledFlag) -> list[str | None]:
    return [compiled.resolve(Subject(k)).variant for k in KEYS]


def cases(hashing: str) -> tuple[list[CompiledFlag], dict[str, Any]]:
    flags = [flag(key, split, hashing=hashing, salt=salt) for key, split, salt in SHAPES]
    request = {
        "cases": [
            {"flag_key": f.key, "targeting": fractional_targeting(f), "keys": KEYS} for f in flags
        ]
    }
    return flags, request


def test_v3_equals_flagd_core_2_fractional_on_every_user() -> None:
    flags, request = cases(FLAGD_V3)
    answer = flagd_v3_run(request)
    assert answer["core"].startswith("2.")
    for compiled, theirs in zip(flags, answer["variants"], strict=True):
        assert isinstance(compiled, FlagdV3Flag)
        mine = ours(compiled)
        assert mine == theirs, compiled.key
        assert len(set(mine)) == len(compiled.spec.variants)  # every variant was reached


def test_legacy_equals_flagd_core_1_fractional_on_every_user() -> None:
    if not LEGACY_PYTHON.exists():
        pytest.fail(f"{LEGACY_PYTHON} missing: run `make flagd-legacy-venv`")
    flags, request = cases(LEGACY)
    done = subprocess.run(
        [str(LEGACY_PYTHON), str(SCRIPT)], input=json.dumps(request), capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["core"] == "1.0.0"
    for compiled, theirs in zip(flags, answer["variants"], strict=True):
        assert type(compiled) is CompiledFlag
        assert ours(compiled) == theirs, compiled.key


def test_the_two_modes_disagree_at_chance_level() -> None:
    """Why the mode is per flag: switching it reshuffles users (80/20: ~68 % keep their variant)."""
    legacy, v3 = (flag("digits", {"c": 80, "t": 20}, hashing=h) for h in (LEGACY, FLAGD_V3))
    same = sum(a == b for a, b in zip(ours(legacy), ours(v3), strict=True)) / len(KEYS)
    assert 0.64 < same < 0.72


@given(st.text(max_size=300), st.text(max_size=40), st.text(min_size=1, max_size=40))
def test_hand_written_cbor_is_canonical_cbor(user: str, salt: str, key: str) -> None:
    user, salt = user.encode("utf-8", "ignore").decode(), salt.encode("utf-8", "ignore").decode()
    key = key.encode("utf-8", "ignore").decode() or "k"
    expected = cbor2.dumps([key, user] if not salt else salt + key + user, canonical=True)
    assert v3_key(*v3_parts(salt, key), user) == expected
    assert split_hash(salt, key, user, FLAGD_V3) == mmh3.hash(expected, 0, False)


@pytest.mark.parametrize("length", [0, 23, 24, 255, 256, 65535, 65536])
def test_cbor_text_heads_at_every_width_boundary(length: int) -> None:
    user = "u" * length
    assert v3_key(*v3_parts("", "digits"), user) == cbor2.dumps(["digits", user], canonical=True)


def test_a_lone_surrogate_hashes_instead_of_raising() -> None:
    v3 = flag("digits", {"c": 50, "t": 50}, hashing=FLAGD_V3)
    assert v3.resolve(Subject("\ud800")).variant in {"c", "t"}


# flagd-testbed v3.9.0 (open-feature/flagd-testbed @ 82ba89e), gherkin/targeting.feature and
# flags/custom-ops.json: the fractional scenarios' expected variants, transcribed (see
# docs/openfeature.md, "Test vectors"). v2 = the string hash (our legacy), v3 = CBOR.
# (flagd flag key, variants in flagd's order, our salt + key, context value, v2, v3)
SUITS = ["clubs", "diamonds", "hearts", "spades"]
TESTBED = [
    ("fractional-flag", SUITS, ("fractional-", "flag"), "jack", "hearts", "diamonds"),
    ("fractional-flag", SUITS, ("fractional-", "flag"), "queen", "spades", "diamonds"),
    ("fractional-flag", SUITS, ("fractional-", "flag"), "ten", "clubs", "clubs"),
    ("fractional-flag", SUITS, ("fractional-", "flag"), "nine", "diamonds", "clubs"),
    ("fractional-flag", SUITS, ("fractional-", "flag"), "3", "clubs", "spades"),
    ("fractional-flag-A-shared-seed", SUITS, ("shared-", "seed"), "seven", "hearts", "hearts"),
    ("fractional-flag-A-shared-seed", SUITS, ("shared-", "seed"), "eight", "diamonds", "hearts"),
    ("fractional-flag-A-shared-seed", SUITS, ("shared-", "seed"), "nine", "clubs", "diamonds"),
    ("fractional-flag-A-shared-seed", SUITS, ("shared-", "seed"), "two", "spades", "diamonds"),
]
SHORTHAND = [("jon@company.com", "heads", "tails"), ("jane@company.com", "tails", "tails")]
# MurmurHash3 preimages at the bucket boundaries (hash 0, 1, 2^31-1, 2^31, 2^32-1), 50/50 split.
HASH_EDGES = [("ejOoVL", "lower"), ("bY9fO-", "lower"), ("SI7p-", "lower"), ("6LvT0", "upper"),
              ("ceQdGm", "upper")]  # fmt: skip


@pytest.mark.parametrize(("flagd_key", "order", "salted", "name", "v2", "v3"), TESTBED)
def test_testbed_vectors_with_a_bucket_by(
    flagd_key: str, order: list[str], salted: tuple[str, str], name: str, v2: str, v3: str
) -> None:
    # flagd hashes cat(prefix, user.name): our salted form hashes salt + key + user id.
    salt, key = salted
    split = dict.fromkeys(order, 25.0)
    assert flag(key, split, hashing=LEGACY, salt=salt).resolve(Subject(name)).variant == v2
    assert flag(key, split, hashing=FLAGD_V3, salt=salt).resolve(Subject(name)).variant == v3


@pytest.mark.parametrize(("targeting_key", "v2", "v3"), SHORTHAND)
def test_testbed_shorthand_vectors(targeting_key: str, v2: str, v3: str) -> None:
    split = {"heads": 50.0, "tails": 50.0}  # flagd weights 1:1, heads first
    for hashing, expected in ((LEGACY, v2), (FLAGD_V3, v3)):
        compiled = flag("fractional-flag-shorthand", split, hashing=hashing)
        assert compiled.resolve(Subject(targeting_key)).variant == expected


@pytest.mark.parametrize(("key", "side"), HASH_EDGES)
def test_testbed_hash_edges_land_on_the_right_side(key: str, side: str) -> None:
    # flagd hashes the bare targeting key here; our bucket formula must split at exactly 2^31.
    assert (bucket(mmh3.hash(key, 0, False)) < 500_000) == (side == "lower")


TESTBED_DIR = os.environ.get("FLAGD_TESTBED")


@pytest.mark.skipif(not TESTBED_DIR, reason="FLAGD_TESTBED not set (a flagd-testbed checkout)")
def test_transcribed_vectors_match_the_testbed_files() -> None:
    """Checks the table above against a flagd-testbed checkout (FLAGD_TESTBED=path)."""
    text = (Path(str(TESTBED_DIR)) / "gherkin" / "targeting.feature").read_text()
    rows: dict[str, set[tuple[str, str, str]]] = {"v2": set(), "v3": set()}
    for block in re.split(r"\n\s*Scenario", text):
        found = re.search(r'key "([^"]+)"', block)
        for tag, table in re.findall(
            r"@fractional-(v2|v3)\s+Examples: v\d\n((?:\s*\|.*\n)+)", block
        ):
            for line in table.strip().splitlines()[1:]:
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if tag in rows and found:
                    rows[tag].add((found.group(1), cells[0], cells[1]))
    for flagd_key, _, _, name, v2, v3 in TESTBED:
        assert (flagd_key, name, v2) in rows["v2"] and (flagd_key, name, v3) in rows["v3"]
    for targeting_key, v2, v3 in SHORTHAND:
        key = "fractional-flag-shorthand"
        assert (key, targeting_key, v2) in rows["v2"] and (key, targeting_key, v3) in rows["v3"]
