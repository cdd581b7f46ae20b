"""Outcomes are checked before they are accepted: the same rules for Track and flagctl track."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from support import digits_flag
from support_events import experiment_flag

from experiments.cli import TrackInputError, parse_line, read_events_file
from experiments.events.model import EventDecodeError, Exposure, Outcome, decode
from experiments.events.validate import InvalidEvent, outcome_from
from flags.schema import parse_flag

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
FLAGS = {
    "digits": parse_flag(experiment_flag()),
    "plain": parse_flag(digits_flag(key="plain", experiment=None)),
}


def track(**overrides: Any) -> Outcome:
    call: dict[str, Any] = {
        "flag": "digits",
        "user_id": "u1",
        "metric": "correct",
        "value": 1.0,
        "time_ms": 0,
        "idempotency_key": "",
        "now_ms": NOW,
    }
    call.update(overrides)
    return outcome_from(FLAGS, **call)


def test_a_good_outcome_gets_the_experiment_and_now() -> None:
    outcome = track(idempotency_key="k1")
    assert outcome == Outcome("k1", "digits", "digits", "u1", "correct", 1.0, NOW)
    assert len(track().event_id) == 32  # a random id when the caller gives none
    assert track(time_ms=NOW - 5).time_ms == NOW - 5
    assert track(metric="downloads").metric == "downloads"  # a ratio's numerator is trackable


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"flag": ""}, "`flag` is required"),
        ({"flag": "nope"}, "unknown flag 'nope'"),
        ({"flag": "plain"}, "has no `experiment` section"),
        ({"user_id": ""}, "`user_id` is required"),
        ({"user_id": "u" * 300}, "longer than 256"),
        ({"metric": "revenue"}, "metric 'revenue' is not declared"),
        ({"metric": "downloads_per_generation"}, "is a ratio: track its numerator 'downloads'"),
        ({"value": math.nan}, "finite number"),
        ({"value": math.inf}, "finite number"),
        ({"idempotency_key": "k" * 300}, "`idempotency_key` is longer"),
        ({"time_ms": 1_700_000_000}, "before the year 2000"),  # seconds, not ms
        ({"time_ms": NOW + 2 * 86_400_000}, "in the future"),
    ],
)
def test_bad_outcomes_are_refused_with_what_to_fix(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message.replace("(", r"\(").replace(")", r"\)")):
        track(**overrides)


def test_events_round_trip_through_their_fields_and_garbage_is_refused() -> None:
    exposure = Exposure("e", "digits", "u1", "control", "1", NOW, (("tier", "pro"),))
    outcome = Outcome("id", "e", "digits", "u1", "correct", 0.5, NOW)
    assert decode(exposure.encode()) == exposure
    assert decode(outcome.encode().encode()) == outcome  # bytes, as Redis returns them
    assert exposure.encode() == f'["x","e","digits","u1","control","1",{NOW},{{"tier":"pro"}},""]'
    assert decode(exposure.encode().removesuffix(',""]') + "]") == exposure  # 8 elements: no split
    split = exposure._replace(split="control=50,candidate=50")
    assert decode(split.encode()) == split
    for bad in (
        "",
        "{}",
        '["x"]',
        '["o","id","e","digits","u1","m",NaN,1]',
        '["o","id","e","digits","u1","m",1e999,1]',
        '["o","id","e","digits","u1","m",1,"soon"]',
        '["x","e","digits","u1","control","1",1,[1]]',
        '["x","e","digits","","control","1",1,{}]',
        '["click","e","digits","u1","control","1",1,{}]',
        b"\xff\xfe",
    ):
        with pytest.raises(EventDecodeError):
            decode(bad)


def test_jsonl_lines_accept_ms_or_iso_times_and_derive_ids() -> None:
    line = {"flag": "digits", "user_id": "u1", "metric": "correct", "value": 1}
    assert parse_line({**line, "time": "2026-01-01T00:00:00Z"}, FLAGS, NOW).time_ms == NOW
    first = parse_line({**line, "time": NOW - 1}, FLAGS, NOW)
    again = parse_line({**line, "time": NOW - 1}, FLAGS, NOW + 99)
    assert first.event_id == again.event_id  # re-importing a file counts each line once
    assert parse_line({**line, "id": "x7"}, FLAGS, NOW).event_id == "x7"
    for bad, message in (
        ([1, 2], "expected a JSON object"),
        ({**line, "value": "1"}, "`value` is required"),
        ({**line, "value": True}, "`value` is required"),
        ({**line, "user": "u1"}, "unknown field"),
        ({**line, "time": "yesterday"}, "not ISO-8601"),
        ({**line, "time": "2026-01-01T00:00:00"}, "needs a zone"),
    ):
        with pytest.raises(InvalidEvent, match=message):
            parse_line(bad, FLAGS, NOW)


def test_an_events_file_with_bad_lines_names_each_and_accepts_none(tmp_path: Path) -> None:
    good = {"flag": "digits", "user_id": "u1", "metric": "correct", "value": 1}
    path = tmp_path / "events.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps(good),
                json.dumps({**good, "metric": "revenue"}),
                "",
                "{not json",
                json.dumps({**good, "user_id": ""}),
            ]
        )
        + "\n"
    )
    with pytest.raises(TrackInputError) as caught:
        read_events_file(path, FLAGS, NOW)
    text = str(caught.value)
    assert "3 bad line(s), nothing imported" in text
    assert "line 2: metric 'revenue' is not declared" in text
    assert "line 4: not JSON" in text
    assert "line 5: `user_id` is required" in text
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "user_id": "u2"}) + "\n")
    assert [o.user_id for o in read_events_file(path, FLAGS, NOW)] == ["u1", "u2"]
