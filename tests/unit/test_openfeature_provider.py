"""The OpenFeature provider answers what the sidecar would serve, with OpenFeature's vocabulary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from support import ROOT, digits_flag

from flags import FlagsError, Subject
from flags.openfeature import TrafficSplitProvider
from flags.sources.memory import MemoryFlagSource
from flags.store import FlagStore
from sidecar.plan import plan_route


def client_for(*docs: dict[str, Any]) -> tuple[OpenFeatureClient, FlagStore]:
    store = FlagStore()
    source = MemoryFlagSource(store)
    for doc in docs:
        source.put(doc["key"], doc)
    api.set_provider(TrafficSplitProvider(store), domain="test")
    return api.get_client("test"), store


CONTEXTS = [
    EvaluationContext(
        targeting_key=f"user-{i}",
        attributes={"tier": ["free", "pro", "enterprise"][i % 3], "tenure_days": i % 60},
    )
    for i in range(3000)
] + [EvaluationContext(targeting_key=u) for u in ("alice@example.com", "bob@example.com")]


@pytest.mark.parametrize("hashing", ["legacy", "flagd-v3"])
def test_every_user_gets_the_sidecars_route(hashing: str) -> None:
    client, store = client_for(digits_flag(hashing=hashing, revision=7))
    reasons = set()
    for ctx in CONTEXTS:
        plan = plan_route(
            store.snapshot, "digits", "", Subject(str(ctx.targeting_key), ctx.attributes)
        )
        target = client.get_object_details("digits", {}, ctx)
        variant = client.get_string_details("digits", "none", ctx)
        assert target.value["model"] == plan.primary.model  # type: ignore[call-overload,index]
        assert target.value["version"] == plan.primary.version  # type: ignore[call-overload,index]
        assert target.variant == variant.value == variant.variant == plan.variant
        assert str(target.reason) == plan.reason
        assert target.flag_metadata["revision"] == plan.revision == 7
        assert target.flag_metadata["model_version"] == plan.primary.version
        reasons.add(target.reason)
    assert reasons == {Reason.SPLIT, Reason.TARGETING_MATCH}


def test_the_object_is_the_target_and_metadata_names_the_model() -> None:
    client, _ = client_for(digits_flag(revision=12))
    details = client.get_object_details("digits", {}, EvaluationContext("alice@example.com"))
    assert details.value == {"model": "digits", "version": "2", "parameters": {"note": "mlp"}}
    assert details.reason == Reason.TARGETING_MATCH and details.variant == "candidate"
    assert dict(details.flag_metadata) == {
        "revision": 12, "version": "12", "exposed": False, "model": "digits",
        "model_version": "2", "rule": "dogfood", "hashing": "legacy",
    }  # fmt: skip


def test_disabled_default_and_static() -> None:
    off = digits_flag(key="off", enabled=False)
    half = digits_flag(
        key="half",
        rules=[],
        allocation={"coverage": 0.0001, "split": {"control": 50, "candidate": 50}},
    )
    static = digits_flag(key="static", rules=[], allocation=None, ramp=None)
    client, _ = client_for(off, half, static)
    ctx = EvaluationContext("user-1")
    assert client.get_string_details("off", "x", ctx).reason == Reason.DISABLED
    outside = client.get_string_details("half", "x", ctx)
    assert (outside.reason, outside.value) == (Reason.DEFAULT, "control")
    assert outside.flag_metadata["exposed"] is False
    static_details = client.get_string_details("static", "x", ctx)
    assert (static_details.reason, static_details.value) == (Reason.STATIC, "control")


def test_errors_return_the_callers_default_with_a_code() -> None:
    client, _ = client_for(digits_flag())
    missing = client.get_string_details("nope", "fallback", EvaluationContext("u"))
    assert (missing.value, missing.reason, missing.error_code) == (
        "fallback",
        Reason.ERROR,
        ErrorCode.FLAG_NOT_FOUND,
    )
    anonymous = client.get_object_details("digits", {"model": "mine"}, EvaluationContext())
    assert anonymous.value == {"model": "mine"}
    assert anonymous.error_code == ErrorCode.TARGETING_KEY_MISSING
    boolean = client.get_boolean_details("digits", True, EvaluationContext("u"))
    assert (boolean.value, boolean.error_code) == (True, ErrorCode.TYPE_MISMATCH)
    assert "get_object_details" in str(boolean.error_message)
    for number in (client.get_integer_details("digits", 3), client.get_float_details("nope", 0.5)):
        assert number.reason == Reason.ERROR
    bad_key = client.get_string_details("digits", "d", EvaluationContext(targeting_key=42))  # type: ignore[arg-type]
    assert (bad_key.value, bad_key.error_code) == ("d", ErrorCode.INVALID_CONTEXT)


def test_attributes_that_no_rule_can_compare_are_ignored() -> None:
    client, _ = client_for(digits_flag())
    ctx = EvaluationContext("user-3", {"tier": ["enterprise"], "tenure_days": {"d": 40}, "x": None})
    details = client.get_string_details("digits", "d", ctx)
    assert details.error_code is None and details.reason in {Reason.SPLIT}


def test_a_flag_change_is_seen_on_the_next_call() -> None:
    client, store = client_for(digits_flag(revision=1))
    source = MemoryFlagSource(store)
    source.put("digits", digits_flag(revision=2, enabled=False))
    details = client.get_string_details("digits", "d", EvaluationContext("alice@example.com"))
    assert (details.reason, details.flag_metadata["revision"]) == (Reason.DISABLED, 2)


def test_from_file_and_what_a_bad_file_says(tmp_path: Path) -> None:
    good = tmp_path / "flags.json"
    good.write_text(json.dumps({"flags": [digits_flag()]}))
    provider = TrafficSplitProvider.from_file(good)
    details = provider.resolve_string_details("digits", "d", EvaluationContext("bob@example.com"))
    assert details.value == "candidate"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(digits_flag(default_variant="nope")))
    with pytest.raises(FlagsError, match="default_variant"):
        TrafficSplitProvider.from_file(bad)
    with pytest.raises(FlagsError, match="cannot read"):
        TrafficSplitProvider.from_file(tmp_path / "absent.json")


def test_import_flags_does_not_import_the_sdk() -> None:
    code = "import sys, flags, flags.store; print('openfeature' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.strip() == "False"
