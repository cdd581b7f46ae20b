"""The sidecar's SignalRecorder, pure: outcomes in, hash fields out (no Redis, injected clock)."""

from __future__ import annotations

import asyncio

import pytest

from flags import Subject
from sidecar.metrics import SidecarMetrics
from sidecar.observers import Exchange
from sidecar.outcome import Assignment, Attempt, FallbackCause, RequestOutcome
from sidecar.plan import Hop, Membership, RoutePlan
from sidecar.settings import load_settings
from sidecar.signal_recorder import SignalRecorder, build_signal_recorder
from signals.codec import Batch, add_batches, merge_hashes
from signals.latency import bucket_index
from signals.model import Group

EXCHANGE = Exchange("ModelInfer", "digits", Subject("u1"), (), 0.0)


class MemoryWriter:
    def __init__(self) -> None:
        self.hashes: Batch = {}

    async def write(self, batch: Batch) -> int:
        add_batches(self.hashes, batch)
        return 0


def outcome(flag: str, membership: Membership, *attempts: Attempt) -> RequestOutcome:
    plan = RoutePlan(flag, "candidate", "SPLIT", Hop("digits", "2"), Hop("digits", "1"),
                     membership=membership)  # fmt: skip
    fallback = FallbackCause.NOT_READY if len(attempts) > 1 else None
    assignment = Assignment(plan, plan.primary, "1", fallback)
    return RequestOutcome("ModelInfer", assignment, attempts, "OK", "", 0.01)


def recorded(recorder: SignalRecorder, writer: MemoryWriter) -> dict[str, int]:
    asyncio.run(recorder.close())
    assert len(writer.hashes) <= 1
    return next(iter(writer.hashes.values()), {})


def test_fallback_counts_the_candidate_failure_and_the_default_answer() -> None:
    writer = MemoryWriter()
    recorder = SignalRecorder(writer, clock=lambda: 1234.9)
    recorder.on_settled(
        EXCHANGE,
        outcome("digits", Membership.EXPOSED,
                Attempt("onnx", "digits", "2", "NOT_READY", 0.0),
                Attempt("onnx", "digits", "1", "OK", 0.004)),
    )  # fmt: skip
    assert list(writer.hashes) == []  # nothing written on the request path
    assert recorded(recorder, writer) == {
        "exposed|onnx|digits|2|a": 1,
        "exposed|onnx|digits|2|r:NOT_READY": 1,  # not sent: no latency bucket
        "exposed|onnx|digits|1|a": 1,
        "exposed|onnx|digits|1|r:OK": 1,
        f"exposed|onnx|digits|1|b:{bucket_index(0.004)}": 1,
    }
    assert list(writer.hashes) == [("digits", 1234)]


def test_unflagged_requests_are_not_recorded() -> None:
    writer = MemoryWriter()
    recorder = SignalRecorder(writer, clock=lambda: 5.0)
    recorder.on_settled(
        EXCHANGE, outcome("", Membership.UNFLAGGED, Attempt("onnx", "digits", "1", "OK", 0.001))
    )
    assert recorded(recorder, writer) == {}


def test_groups_follow_the_membership_and_shadow_calls_record_apart() -> None:
    writer = MemoryWriter()
    recorder = SignalRecorder(writer, clock=lambda: 9.0)
    for membership in (Membership.PINNED, Membership.TARGETED, Membership.NOT_IN_EXPERIMENT):
        recorder.on_settled(
            EXCHANGE, outcome("digits", membership, Attempt("onnx", "digits", "1", "OK", 0.001))
        )
    recorder.record("digits", "shadow", "onnx", "digits", "2", "INTERNAL", 0.002)
    recorder.record("digits", "shadow", "onnx", "digits", "2", "CIRCUIT_OPEN", 0.0, sent=False)
    window = merge_hashes("digits", 9, 10, [recorded(recorder, writer)])
    for group in (Group.PINNED, Group.TARGETED, Group.NOT_IN_EXPERIMENT):
        assert window.version("digits", "digits", "1", groups=(group,)).attempts == 1
    shadow = window.version("digits", "digits", "2", groups=(Group.SHADOW,))
    assert (shadow.attempts, shadow.failures, sum(shadow.histogram)) == (2, 2, 1)
    assert window.version("digits", "digits", "2").attempts == 0  # exposed: untouched


def test_no_redis_no_recorder_and_signals_can_be_turned_off() -> None:
    metrics = SidecarMetrics()
    assert build_signal_recorder(load_settings([], env={}), metrics) is None
    off = load_settings(["--redis-url", "redis://h:1/0", "--signals-interval-s", "0"], env={})
    assert build_signal_recorder(off, metrics) is None
    on = load_settings([], env={"TRAFFICSPLIT_SIGNALS_REDIS_URL": "redis://writer@h:1/0"})
    assert isinstance(build_signal_recorder(on, metrics), SignalRecorder)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--signals-retention-s", "0"], "must be at least 1"),
        (["--signals-max-backlog", "-3"], "must be at least 1"),
        (["--signals-interval-s", "-1"], "must be >= 0"),
        (["--signals-interval-s", "soon"], "invalid float value"),
    ],
)
def test_bad_signal_settings_are_one_clear_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_settings(args, env={})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
