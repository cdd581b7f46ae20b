"""Properties every assignment must keep, checked with hypothesis."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from support import digits_flag

from flags import CompiledFlag, Subject, evaluate, parse_flag
from flags.mutations import ramp

user_ids = st.text(min_size=1, max_size=40)
percents = st.floats(min_value=0, max_value=100, allow_nan=False).map(lambda p: round(p, 4))


def flag(candidate: float, coverage: float = 100.0, **extra: Any) -> CompiledFlag:
    doc = digits_flag(
        rules=[],
        allocation={
            "coverage": coverage,
            "split": {"control": round(100 - candidate, 4), "candidate": candidate},
        },
        **extra,
    )
    return CompiledFlag(parse_flag(doc))


@given(user=user_ids, share=percents)
def test_same_subject_always_gets_the_same_variant(user: str, share: float) -> None:
    a, b = flag(share), flag(share)  # separately compiled, as in two sidecars
    assert a.resolve(Subject(user)) == b.resolve(Subject(user))


@settings(max_examples=50)
@given(users=st.lists(user_ids, min_size=1, max_size=200, unique=True), low=percents, high=percents)
def test_raising_the_candidate_share_never_moves_a_candidate_user_back(
    users: list[str], low: float, high: float
) -> None:
    low, high = sorted((low, high))
    before, after = flag(low), flag(high)
    for user in users:
        if before.resolve(Subject(user)).variant == "candidate":
            assert after.resolve(Subject(user)).variant == "candidate"


@settings(max_examples=50)
@given(users=st.lists(user_ids, min_size=1, max_size=200, unique=True), low=percents, high=percents)
def test_ramp_command_is_monotonic_too(users: list[str], low: float, high: float) -> None:
    low, high = sorted((low, high))
    spec = parse_flag(digits_flag(rules=[]))
    before, after = (
        CompiledFlag(ramp(spec, "candidate", low)),
        CompiledFlag(ramp(spec, "candidate", high)),
    )
    for user in users:
        if before.resolve(Subject(user)).variant == "candidate":
            assert after.resolve(Subject(user)).variant == "candidate"


@settings(max_examples=50)
@given(users=st.lists(user_ids, min_size=1, max_size=200, unique=True), low=percents, high=percents)
def test_raising_coverage_never_drops_an_included_user(
    users: list[str], low: float, high: float
) -> None:
    low, high = sorted((low, high))
    before, after = flag(50, coverage=low), flag(50, coverage=high)
    for user in users:
        first = before.resolve(Subject(user))
        if first.exposed:
            second = after.resolve(Subject(user))
            assert second.exposed and second.variant == first.variant


@settings(max_examples=8, deadline=None)
@given(share=st.sampled_from([1, 5, 20, 33.3333, 50, 80, 99]))
def test_shares_over_100k_users_match_the_split(share: float) -> None:
    compiled = flag(share)
    n = 100_000
    hits = sum(compiled.resolve(Subject(f"user-{i}")).variant == "candidate" for i in range(n))
    assert abs(hits / n * 100 - share) <= 0.5


@settings(max_examples=30)
@given(users=st.lists(user_ids, min_size=1, max_size=100, unique=True), other_share=percents)
def test_changing_one_flag_never_moves_users_in_another(
    users: list[str], other_share: float
) -> None:
    digits = CompiledFlag(parse_flag(digits_flag(rules=[])))

    def ranker(share: float) -> CompiledFlag:
        split = {"control": 100 - share, "candidate": share}
        return CompiledFlag(
            parse_flag(digits_flag(key="ranker", rules=[], allocation={"split": split}))
        )

    before = {"digits": digits, "ranker": ranker(10)}
    after = {"digits": digits, "ranker": ranker(other_share)}
    for user in users:
        assert evaluate(before, "digits", Subject(user)) == evaluate(after, "digits", Subject(user))
