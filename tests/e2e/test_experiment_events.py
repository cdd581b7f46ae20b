"""The event path end to end: real redis-server, real sidecar processes (embedded engine), the
native stub, flagctl. Exposures deduplicated across sidecar restarts, outcomes before exposures,
idempotent replays, mixed-exposure users excluded, Track's bad input, the drop counter."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from servers import RedisServer, wait_until
from support import ROOT
from support_events import experiment_flag

from experiments.events.sinks import EventKeys
from flags.admin import FlagAdmin
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from flags.schema import parse_flag
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2 as pb
from sidecar._proto.trafficsplit.v1 import trafficsplit_pb2_grpc as pb_grpc
from sidecar.launcher import SidecarProcess

pytestmark = [pytest.mark.redis]

PIXELS = np.load(ROOT / "triton_models" / "digits" / "golden.npz")["pixels"][:1].astype(np.float32)


class Events:
    """A flag with an experiment in a real Redis, and helpers around one sidecar at a time."""

    def __init__(self, redis: RedisServer, prefix: str, tmp: Path) -> None:
        self.redis, self.prefix, self.tmp = redis, prefix, tmp
        self.keys = EventKeys(prefix)
        self.db = tmp / "experiments.duckdb"
        self.admin = FlagAdmin(sync_client(redis.url), keys=RedisKeys(prefix), actor="e2e")
        self.admin.apply(parse_flag(experiment_flag(candidate=50)), reason="e2e", force=True)

    def sidecar(self, *extra: str) -> SidecarProcess:
        return SidecarProcess(
            ["--redis-url", self.redis.url, "--redis-prefix", self.prefix,
             "--events-flush-interval-s", "0.05", *extra],
            stderr_path=self.tmp / "sidecar.log",
        )  # fmt: skip

    def flagctl(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "flagctl", "--redis-url", self.redis.url,
             "--prefix", self.prefix, *args],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    def summary(self) -> dict[str, Any]:
        self.flagctl("experiments", "ingest", "--db", str(self.db))
        out = self.flagctl("experiments", "summary", "digits", "--db", str(self.db), "--json")
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def stream_length(self, stream: str) -> int:
        return int(self.redis.client().xlen(stream))


def infer(stub: pb_grpc.TrafficSplitStub, user: str, tier: str = "pro") -> pb.InferResponse:
    tensor = pb.Tensor(name="pixels", datatype="FP32", shape=[1, 64], data=PIXELS.tobytes())
    request = pb.InferRequest(
        subject=pb.Subject(id=user, attributes={"tier": tier}), model="digits", inputs=[tensor]
    )
    return stub.Infer(request, timeout=10)


def track(stub: pb_grpc.TrafficSplitStub, **fields: Any) -> pb.TrackResponse:
    return stub.Track(pb.TrackRequest(**{"flag": "digits", **fields}), timeout=10)


@pytest.fixture
def events(redis_server: RedisServer, prefix: str, tmp_path: Path) -> Events:
    return Events(redis_server, prefix, tmp_path)


@pytest.fixture
def running(events: Events) -> Iterator[tuple[Events, pb_grpc.TrafficSplitStub]]:
    with events.sidecar() as sidecar, grpc.insecure_channel(sidecar.address) as channel:
        yield events, pb_grpc.TrafficSplitStub(channel)


def test_exposures_once_per_user_across_restarts_and_outcomes_before_exposures(
    events: Events,
) -> None:
    users = [f"user-{i}" for i in range(40)]
    variants: dict[str, str] = {}
    with events.sidecar() as sidecar, grpc.insecure_channel(sidecar.address) as channel:
        stub = pb_grpc.TrafficSplitStub(channel)
        # Outcomes first: the app tracks before any of these users was served.
        for user in users:
            track(stub, user_id=user, metric="clicks", value=2.0, idempotency_key=f"c-{user}")
        for _ in range(3):
            for user in users:
                variants[user] = infer(stub, user).assignment.variant
    wait_until(lambda: events.stream_length(events.keys.exposures) == 40, timeout=10,
               what="one exposure per user in the stream")  # fmt: skip
    with events.sidecar() as sidecar, grpc.insecure_channel(sidecar.address) as channel:
        stub = pb_grpc.TrafficSplitStub(channel)
        for user in users:  # a fresh sidecar remembers nobody: records them again
            assert infer(stub, user).assignment.variant == variants[user]
    assert events.stream_length(events.keys.exposures) == 80  # flushed at shutdown
    summary = events.summary()
    expected = {v: list(variants.values()).count(v) for v in set(variants.values())}
    assert summary["users"] == expected and summary["mixed_users"] == 0
    assert sum(expected.values()) == 40 and len(expected) == 2
    clicks = summary["metrics"]["clicks"]  # aggregated per user with `count`: 1 event each
    assert {v: (s["n"], s["sum"]) for v, s in clicks.items()} == {
        v: (n, 1.0 * n) for v, n in expected.items()
    }
    assert events.stream_length(events.keys.exposures) == 0  # trimmed once ingested
    # Replaying every event (a second ingestion of the same data) changes nothing.
    assert events.summary() == summary


def test_track_idempotency_and_bad_input(
    running: tuple[Events, pb_grpc.TrafficSplitStub],
) -> None:
    events, stub = running
    infer(stub, "u1")
    first = track(stub, user_id="u1", metric="correct", value=1, idempotency_key="k1")
    again = track(stub, user_id="u1", metric="correct", value=1, idempotency_key="k1")
    assert first.event_id == again.event_id == "k1"
    bad = [
        ({"user_id": "u1", "metric": "revenue", "value": 1}, "metric 'revenue' is not declared"),
        ({"user_id": "u1", "metric": "correct", "value": float("nan")}, "finite number"),
        ({"user_id": "", "metric": "correct", "value": 1}, "`user_id` is required"),
        ({"flag": "nope", "user_id": "u1", "metric": "correct", "value": 1}, "unknown flag"),
        ({"user_id": "u1", "metric": "correct", "value": 1, "time_unix_ms": 5}, "year 2000"),
    ]
    for fields, message in bad:
        with pytest.raises(grpc.RpcError) as caught:
            track(stub, **fields)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (caught.value.details() or "")
    wait_until(lambda: events.stream_length(events.keys.outcomes) == 2, timeout=10,
               what="both copies of k1 in the stream")  # fmt: skip
    assert events.summary()["metrics"]["correct"]  # ingested
    correct = events.summary()["metrics"]["correct"]
    assert sum(s["n"] for s in correct.values()) == 1
    assert sum(s["sum"] for s in correct.values()) == 1.0  # k1 counted once


def test_users_a_ramp_moved_are_mixed_and_excluded(
    running: tuple[Events, pb_grpc.TrafficSplitStub],
) -> None:
    events, stub = running
    users = [f"m-{i}" for i in range(30)]
    before = {u: infer(stub, u).assignment.variant for u in users}
    events.flagctl("ramp", "digits", "candidate", "100", "--reason", "e2e")
    wait_until(lambda: infer(stub, "probe").assignment.variant == "candidate", timeout=5,
               what="the ramp applied")  # fmt: skip
    for user in users:
        assert infer(stub, user).assignment.variant == "candidate"
    moved = sum(1 for v in before.values() if v == "control")
    assert 0 < moved < 30
    wait_until(lambda: events.stream_length(events.keys.exposures) == 30 + moved + 1,
               timeout=10, what="exposures flushed")  # fmt: skip
    summary = events.summary()
    assert summary["mixed_users"] == moved
    assert summary["mixed_by_variants"] == {"candidate+control": moved}
    assert summary["users"] == {"candidate": 30 - moved + 1}  # the probe joined as candidate


def test_flagctl_track_file_names_the_bad_line_and_writes_nothing(events: Events) -> None:
    good = {"flag": "digits", "user_id": "u1", "metric": "clicks", "value": 3}
    path = events.tmp / "events.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "value": "x"}) + "\n")
    result = events.flagctl("track", "--file", str(path), ok=False)
    assert result.returncode == 1
    assert "line 2: `value` is required" in result.stderr and "Traceback" not in result.stderr
    assert events.stream_length(events.keys.outcomes) == 0
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "user_id": "u2"}) + "\n")
    assert "tracked 2 outcome(s)" in events.flagctl("track", "--file", str(path)).stdout
    single = events.flagctl("track", "digits", "u3", "revenue", "1", ok=False)
    assert single.returncode == 1 and "metric 'revenue' is not declared" in single.stderr
    events.flagctl("track", "digits", "u3", "clicks", "1", "--id", "one")
    assert events.stream_length(events.keys.outcomes) == 3


def _scrape(url: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("trafficsplit_events")
    }


def test_a_redis_outage_past_the_bound_counts_drops(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    events = Events(fresh_redis, "drop:", tmp_path)
    with events.sidecar("--events-max-buffer", "5", "--metrics-listen", "127.0.0.1:0") as sidecar:
        url = sidecar.metrics_url
        with grpc.insecure_channel(sidecar.address) as channel:
            stub = pb_grpc.TrafficSplitStub(channel)
            infer(stub, "first")
            wait_until(lambda: _scrape(url).get("trafficsplit_events_written_total") == 1.0,
                       timeout=10, what="the first exposure written")  # fmt: skip
            fresh_redis.kill()
            for i in range(20):  # served from the last good flags; 5 buffered, 15 dropped
                infer(stub, f"outage-{i}")
            metrics = _scrape(url)
            assert metrics["trafficsplit_events_dropped_total"] == 15.0
            assert metrics["trafficsplit_events_buffered"] == 5.0
            fresh_redis.start()
            wait_until(lambda: _scrape(url).get("trafficsplit_events_written_total") == 6.0,
                       timeout=15, what="the buffered exposures written after Redis returned")  # fmt: skip
    assert events.stream_length(events.keys.exposures) == 5


def test_without_redis_events_go_to_a_file_and_ingest_from_it(tmp_path: Path) -> None:
    flags_file = tmp_path / "flags.json"
    flags_file.write_text(json.dumps(experiment_flag(candidate=50)))
    events_file = tmp_path / "events.jsonl"
    args = ["--flags-file", str(flags_file), "--events-flush-interval-s", "0.05"]
    sidecar_args = [*args, "--events-file", str(events_file)]
    with SidecarProcess(sidecar_args) as sidecar, grpc.insecure_channel(sidecar.address) as channel:
        stub = pb_grpc.TrafficSplitStub(channel)
        for i in range(10):
            infer(stub, f"u{i}")
            track(stub, user_id=f"u{i}", metric="correct", value=i % 2)
    assert len(events_file.read_text().splitlines()) == 20  # everything flushed at shutdown
    db = str(tmp_path / "x.duckdb")

    def flagctl(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flagctl", *a], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=True)  # fmt: skip

    for _ in range(2):  # the second run reads from where the first stopped: nothing new
        flagctl(
            "experiments", "ingest", "--no-redis", "--events-file", str(events_file), "--db", db
        )
    out = flagctl("experiments", "summary", "digits", "--flags-file", str(flags_file), "--db", db,
                  "--json")  # fmt: skip
    summary = json.loads(out.stdout)
    assert sum(summary["users"].values()) == 10
    assert sum(s["sum"] for s in summary["metrics"]["correct"].values()) == 5.0


def test_track_on_a_sidecar_that_records_nothing_is_a_failed_precondition(tmp_path: Path) -> None:
    with (
        SidecarProcess(["--events", "off"]) as sidecar,
        grpc.insecure_channel(sidecar.address) as ch,
        pytest.raises(grpc.RpcError) as caught,
    ):
        track(pb_grpc.TrafficSplitStub(ch), user_id="u1", metric="correct", value=1)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--events-file" in (caught.value.details() or "")


def test_experiment_commands_fail_clearly(tmp_path: Path) -> None:
    def flagctl(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flagctl", "--redis-url",
                               "redis://127.0.0.1:1/0", *a], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    db = str(tmp_path / "none.duckdb")
    for args, message in (
        (("experiments", "ingest", "--db", db), "cannot reach Redis at redis://127.0.0.1:1/0"),
        (("experiments", "export", "--db", db + ".x", "--parquet", str(tmp_path)), "no such store"),
        (("track", "digits", "u1", "correct", "1"), "cannot reach Redis"),
        (("track", "digits", "u1"), "track needs FLAG USER_ID METRIC VALUE"),
    ):
        result = flagctl(*args)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
