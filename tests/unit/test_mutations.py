"""The pure edits behind flagctl's write verbs."""

from __future__ import annotations

import re

import pytest
from support import digits_flag

from flags import VariantError, parse_flag
from flags.mutations import allow, diff, ramp, rollback, set_enabled


def spec():  # type: ignore[no-untyped-def]
    return parse_flag(digits_flag())


def test_ramp_gives_the_rest_to_the_default_variant() -> None:
    ramped = ramp(spec(), "candidate", 5)
    assert ramped.allocation is not None
    assert ramped.allocation.split == {"control": 95.0, "candidate": 5.0}


def test_ramp_keeps_shares_exact_at_fine_resolution() -> None:
    ramped = ramp(spec(), "candidate", 33.3333)
    assert ramped.allocation is not None
    assert sum(ramped.allocation.split.values()) == pytest.approx(100.0, abs=1e-9)


def test_ramp_keeps_other_candidates_share() -> None:
    doc = digits_flag(
        variants={**digits_flag()["variants"], "mlp3": {"model": "digits", "version": "3"}},
        allocation={"split": {"control": 70, "candidate": 20, "mlp3": 10}},
    )
    ramped = ramp(parse_flag(doc), "candidate", 50)
    assert ramped.allocation is not None
    assert ramped.allocation.split == {"control": 40.0, "candidate": 50.0, "mlp3": 10.0}
    with pytest.raises(VariantError, match="other candidates already hold 10 %"):
        ramp(parse_flag(doc), "candidate", 95)


def test_ramp_creates_an_allocation_when_there_is_none() -> None:
    ramped = ramp(parse_flag(digits_flag(allocation=None)), "candidate", 1)
    assert ramped.allocation is not None and ramped.allocation.coverage == 100


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("nope", "has no variant 'nope' (variants: candidate, control)"),
        ("control", "is the default variant"),
    ],
)
def test_ramp_refuses_bad_variants(variant: str, message: str) -> None:
    with pytest.raises(VariantError, match=re.escape(message)):
        ramp(spec(), variant, 5)


def test_rollback_turns_off_and_zeroes_every_split() -> None:
    doc = digits_flag(
        rules=[
            {
                "name": "pro",
                "when": {"attribute": "tier", "op": "eq", "value": "pro"},
                "split": {"control": 50, "candidate": 50},
            }
        ]
    )
    rolled = rollback(parse_flag(doc))
    assert rolled.enabled is False
    assert rolled.allocation is not None and rolled.allocation.split["candidate"] == 0
    assert rolled.rules[0].split == {"control": 100.0, "candidate": 0.0}
    # Re-enabling resumes rules but does not re-expose the split: that takes a new ramp.
    assert set_enabled(rolled, True).allocation.split["candidate"] == 0  # type: ignore[union-attr]


def test_allow_moves_users_between_allow_lists() -> None:
    moved = allow(spec(), "control", ["alice@example.com", "zed"])
    assert moved.rules[0].name == "allow-control"
    assert moved.rules[0].users == ["alice@example.com", "zed"]
    dogfood = next(r for r in moved.rules if r.name == "dogfood")
    assert dogfood.users == ["bob@example.com"]


def test_allow_appends_to_an_existing_allow_list() -> None:
    once = allow(spec(), "candidate", ["x"])
    twice = allow(once, "candidate", ["y", "x"])
    assert twice.rules[0].users == ["x", "y"]


def test_diff_names_each_changed_path() -> None:
    before = spec().to_document()
    after = ramp(spec(), "candidate", 5).to_document()
    assert diff(before, after) == [
        "allocation.split.candidate: 20.0 -> 5.0",
        "allocation.split.control: 80.0 -> 95.0",
    ]
    assert diff(None, after) == ["created"]
