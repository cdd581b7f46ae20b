"""Fuzzing the one flag validator: whatever comes in, only FlagValidationError comes out.

Random JSON values, random text and bytes, and mutations of the demo flag (values swapped for
extreme numbers, deep nesting, wrong types, deleted or added fields) go through ``parse_flag``
and the file loader. Anything accepted must round-trip and compile; nothing may raise anything
but the package's validation error (a RecursionError or a TypeError here would crash a sidecar's
reload or print a traceback in flagctl).
"""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import digits_flag

from flags import CompiledFlag, FlagValidationError, parse_flag
from flags.schema import load_flag_file_text

EXTREME_NUMBERS = st.sampled_from(
    [
        float("inf"),
        float("-inf"),
        float("nan"),
        1e308,
        -0.0,
        2**53,
        2**63 - 1,
        2**63,
        -(2**63) - 1,
        10**30,
        10**40,
        -1,
        0,
    ]
)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(
    SCALARS | EXTREME_NUMBERS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_validation_errors(document: Any) -> None:
    try:
        spec = parse_flag(document)
    except FlagValidationError as exc:
        assert exc.issues and all(isinstance(i, str) and i for i in exc.issues)
        return
    assert parse_flag(spec.to_json()) == spec  # what is accepted survives a write and a read
    CompiledFlag(spec)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += paths(v, (*prefix, i))
    return found


def nested(depth: int, leaf: Any) -> Any:
    for i in range(depth):
        leaf = {"not": leaf} if i % 2 else [leaf]
    return leaf


@st.composite
def mutated_flags(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(digits_flag())
    for _ in range(draw(st.integers(1, 4))):
        targets = paths(doc)
        path = draw(st.sampled_from(targets))
        action = draw(st.sampled_from(["replace", "delete", "add", "deep"]))
        if not path:
            continue
        parent: Any = doc
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if action == "delete" and isinstance(parent, dict):
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(JSON_VALUES)
        elif action == "deep":  # beyond every limit, within what json.dumps can still write
            parent[last] = nested(draw(st.integers(0, 800)), draw(SCALARS))
            break
        else:
            parent[last] = draw(JSON_VALUES | EXTREME_NUMBERS)
    return doc


@FUZZ
@given(JSON_VALUES)
def test_random_values(value: Any) -> None:
    only_validation_errors(value)
    only_validation_errors(json.dumps(value))


@FUZZ
@given(mutated_flags())
def test_mutated_flags_as_data_and_as_json_text(doc: dict[str, Any]) -> None:
    only_validation_errors(doc)
    only_validation_errors(json.dumps(doc))


@FUZZ
@given(mutated_flags())
def test_same_verdict_and_message_from_redis_text_and_from_a_dict(doc: dict[str, Any]) -> None:
    outcomes = []
    for document in (doc, json.dumps(doc).encode()):
        try:
            outcomes.append(parse_flag(document).to_json())
        except FlagValidationError as exc:
            outcomes.append(exc.issues)
    assert outcomes[0] == outcomes[1]


@FUZZ
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_random_text(text: str) -> None:
    only_validation_errors(text)
    only_validation_errors(text.encode("utf-8", "surrogatepass"))
    for filename in ("f.json", "f.yaml"):
        with contextlib.suppress(FlagValidationError):
            load_flag_file_text(text, filename=filename)


@FUZZ
@given(mutated_flags())
def test_yaml_files_give_the_json_verdict(doc: dict[str, Any]) -> None:
    """A flag written as YAML is judged like the same flag as JSON (e.g. `.inf` like 1e999)."""
    try:
        json_entries = load_flag_file_text(json.dumps(doc), filename="f.json")
        yaml_entries = load_flag_file_text(yaml.safe_dump(doc, sort_keys=False), filename="f.yaml")
    except FlagValidationError:
        return  # depth beyond the limit: rejected either way
    verdicts = []
    for entries in (json_entries, yaml_entries):
        try:
            verdicts.append(parse_flag(entries[0]).to_json())
        except FlagValidationError as exc:
            verdicts.append(exc.issues)
    assert verdicts[0] == verdicts[1]


def test_an_integer_too_long_for_python_to_convert_is_out_of_range() -> None:
    text = json.dumps(digits_flag()).replace('"revision": 0', '"revision": ' + "9" * 5000)
    text = text if "9" * 5000 in text else text[:-1] + ', "revision": ' + "9" * 5000 + "}"
    try:
        parse_flag(text)
    except FlagValidationError as exc:
        assert exc.issues == ("revision: integer out of range (must be between -2^63 and 2^63-1)",)
    else:
        raise AssertionError("accepted a 5,000-digit revision")
