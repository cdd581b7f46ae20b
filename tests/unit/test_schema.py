"""Flag validation: good documents parse, broken ones say which field is wrong and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import digits_flag

from flags import FlagValidationError, parse_flag
from flags.schema import load_flag_file_text

BROKEN = Path(__file__).resolve().parent.parent / "fixtures" / "flags" / "broken"

# file -> a fragment the message must contain (field path and what is wrong)
EXPECTED_ISSUES = {
    "truncated_json.json": "(document): not valid JSON",
    "empty_version.json": "variants.candidate.version: must be a non-empty string",
    "unknown_default.json": "default_variant: unknown variant 'champion'",
    "split_not_100.json": "allocation.split: percentages must add up to 100 (they add up to 110)",
    "coverage_over_100.json": "allocation.coverage: Input should be less than or equal to 100",
    "rule_without_matcher.json": "rules.0: a rule needs `users` (an allow-list) or `when`",
    "rule_serve_and_split.json": "rules.0: a rule needs exactly one of `serve` (a variant) or `split`",
    "bad_operator.json": "rules.0.when.op: Input should be 'eq', 'ne', 'in'",
    "in_needs_list.json": "rules.0.when: operator 'in' needs a list value",
    "misspelled_field.json": "enabeld: is not a known field (check the spelling)",
    "ramp_not_increasing.json": "ramp.steps: steps must strictly increase",
    "shadow_unknown_variant.json": "shadow.variant: unknown variant 'ghost'",
    "not_an_object.json": "(document): must be a JSON object",
    "negative_revision.json": "revision: Input should be greater than or equal to 0",
    "nan_percent.json": "allocation.coverage: must be a finite number (NaN and infinity",
    "infinite_number.json": "allocation.coverage: must be a finite number (NaN and infinity",
    "revision_over_int64.json": "revision: integer out of range (must be between -2^63",
    "revision_over_limit.json": "revision: Input should be less than or equal to 9007199254740991",
    "huge_parameter.json": "variants.control.parameters.temperature: integer out of range",
    "deep_condition.json": "(document): nested more than 100 levels deep",
    "conditions_too_deep.json": "rules.0.when: conditions nest more than 32 levels",
}


def test_every_broken_fixture_has_an_expectation() -> None:
    assert sorted(p.name for p in BROKEN.glob("*.json")) == sorted(EXPECTED_ISSUES)


@pytest.mark.parametrize("name", sorted(EXPECTED_ISSUES))
def test_broken_flag_is_rejected_with_a_field_path(name: str) -> None:
    with pytest.raises(FlagValidationError) as info:
        parse_flag((BROKEN / name).read_bytes())
    joined = " | ".join(info.value.issues)
    assert EXPECTED_ISSUES[name] in joined


def test_bundled_demo_flag_is_valid_and_round_trips() -> None:
    spec = parse_flag(digits_flag())
    assert spec.variants["candidate"].version == "2"
    assert parse_flag(spec.to_json()) == spec


def test_integer_versions_are_accepted_as_text() -> None:
    spec = parse_flag(
        digits_flag(
            variants={"control": {"model": "digits", "version": 1}},
            rules=[],
            allocation=None,
            ramp=None,
            shadow=None,
        )
    )
    assert spec.variants["control"].version == "1"


def test_stored_key_must_match_document_key() -> None:
    with pytest.raises(FlagValidationError, match="key: is 'digits' but is stored as 'other'"):
        parse_flag(digits_flag(), key="other")


def test_every_issue_is_reported_not_just_the_first() -> None:
    doc = digits_flag()
    doc["variants"]["candidate"]["version"] = ""
    doc["allocation"]["split"] = {"control": 10, "candidate": 10}
    with pytest.raises(FlagValidationError) as info:
        parse_flag(doc)
    assert len(info.value.issues) == 2


def test_not_condition_serialises_with_its_documented_name() -> None:
    doc = digits_flag(
        rules=[
            {
                "when": {"not": {"attribute": "tier", "op": "eq", "value": "free"}},
                "serve": "candidate",
            }
        ]
    )
    assert '"not":' in parse_flag(doc).to_json()


@pytest.mark.parametrize(
    ("text", "filename", "keys"),
    [
        (json.dumps(digits_flag()), "f.json", ["digits"]),
        (json.dumps([digits_flag(), digits_flag(key="b")]), "f.json", ["digits", "b"]),
        ("flags:\n  - key: a\n  - key: b\n", "f.yaml", ["a", "b"]),
        ("flags:\n  a: {enabled: true}\n", "f.yaml", ["a"]),
    ],
)
def test_flag_files_hold_one_flag_or_many(text: str, filename: str, keys: list[str]) -> None:
    assert [d["key"] for d in load_flag_file_text(text, filename=filename)] == keys


def test_flag_file_of_the_wrong_shape_is_rejected() -> None:
    with pytest.raises(FlagValidationError, match="expected a flag object"):
        load_flag_file_text("42", filename="f.yaml")
