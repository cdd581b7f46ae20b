"""``flagctl report`` end to end: real flagctl processes over an events file or a real
redis-server, the JSON, the bad-input lines, and the HTML page rendered by a real headless
chromium (Debian's package: ``make chromium``) with its DOM and console checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from servers import RedisServer
from support import ROOT
from support_report import FLAG_FILE, flag_file, two_weeks, write_events

from experiments.events.model import FIELD
from experiments.events.sinks import EventKeys
from flags.admin import FlagAdmin
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from flags.schema import parse_flag

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def flagctl(*args: str, redis_url: str = "redis://127.0.0.1:1/0", prefix: str = "t:") -> Any:
    return subprocess.run(
        [sys.executable, "-m", "flagctl", "--redis-url", redis_url, "--prefix", prefix, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "120"},
    )  # fmt: skip


def offline(tmp: Path, *args: str, flags: Path = FLAG_FILE) -> Any:
    return flagctl("report", "digits", "--no-redis", "--flags-file", str(flags),
                   "--db", str(tmp / "x.duckdb"), *args)  # fmt: skip


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_events(tmp_path_factory.mktemp("events") / "events.jsonl", two_weeks())


def one_line_error(done: Any, *needles: str) -> None:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    for needle in needles:
        assert needle in done.stderr


def test_the_summary_ingests_the_events_file_first_and_leads_with_the_verdict(
    tmp_path: Path, events: Path
) -> None:
    done = offline(tmp_path, "--events-file", str(events))
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    assert lines[0].startswith("ingested 12600 events (4200 new exposures, 8400 new outcomes)")
    assert lines[1:3] == ["digits: experiment digits", "SHIP CANDIDATE"]
    assert "correct (primary), candidate" in done.stdout and "tier=pro" in done.stdout
    again = offline(tmp_path, "--events-file", str(events), "--json")  # nothing new: idempotent
    assert again.returncode == 0, again.stderr
    assert "ingested 0 events" in again.stderr
    report = json.loads(again.stdout)
    assert report["decision"]["verdict"] == "ship" and report["users"] == {
        "control": 2469, "candidate": 1731}  # fmt: skip
    primary = report["metrics"][0]
    assert primary["metric"] == "correct" and primary["fixed"]["test"] == "two-proportion z-test"
    assert primary["fixed"]["statistic"] is not None and primary["sequential"]["p_value"] < 0.05
    only = json.loads(offline(tmp_path, "--metric", "latency_ms", "--json").stdout)
    assert {m["metric"] for m in only["metrics"]} == {"latency_ms"}
    assert only["decision"]["reasons"] == report["decision"]["reasons"]  # (days_run moves on)


def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path: Path, events: Path) -> None:
    one_line_error(offline(tmp_path, flags=flag_file(tmp_path / "f.json")), "no exposures",
                   "'digits'")  # an empty store: nothing recorded yet  # fmt: skip
    doc = json.loads(FLAG_FILE.read_text())
    doc.pop("experiment")
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(doc))
    one_line_error(offline(tmp_path, flags=bare), "has no `experiment` section")
    other = flagctl("report", "nope", "--no-redis", "--flags-file", str(FLAG_FILE))
    one_line_error(other, "'nope' is not in")
    one_line_error(offline(tmp_path, "--events-file", str(events), "--metric", "clicks"),
                   "'clicks' is not declared (declared: correct, latency_ms)")  # fmt: skip
    usage = flagctl("report", "digits", "--no-redis")
    assert usage.returncode == 2 and "--flags-file" in usage.stderr
    dead = flagctl("report", "digits", "--db", str(tmp_path / "y.duckdb"))  # no Redis there
    one_line_error(dead, "redis")


@pytest.mark.redis
def test_events_in_redis_are_ingested_trimmed_and_judged(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    admin = FlagAdmin(sync_client(redis_server.url), keys=RedisKeys(prefix), actor="test")
    admin.apply(parse_flag(json.loads(FLAG_FILE.read_text())), reason="test", force=True)
    keys, client = EventKeys(prefix), redis_server.client()
    pipe = client.pipeline(transaction=False)
    for event in two_weeks(users_per_day=100, days=5):
        stream = keys.exposures if type(event).__name__ == "Exposure" else keys.outcomes
        pipe.xadd(stream, {FIELD: event.encode()})
    pipe.execute()
    db = str(tmp_path / "r.duckdb")
    done = flagctl("report", "digits", "--db", db, "--json", redis_url=redis_server.url,
                   prefix=prefix)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ingested 1500 events" in done.stderr
    assert client.xlen(keys.exposures) == 0 and client.xlen(keys.outcomes) == 0  # trimmed
    report = json.loads(done.stdout)
    assert sum(report["users"].values()) == 500
    assert report["decision"]["verdict"] in ("ship", "keep_running", "do_not_ship")
    unknown = flagctl("report", "nope", "--db", db, redis_url=redis_server.url, prefix=prefix)
    one_line_error(unknown, "nope")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make chromium)")
def test_the_html_page_renders_in_headless_chromium_without_errors(
    tmp_path: Path, events: Path
) -> None:
    page = tmp_path / "report.html"
    done = offline(tmp_path, "--events-file", str(events), "--html", str(page))
    assert done.returncode == 0, done.stderr
    assert f"HTML report: {page}" in " ".join(done.stdout.split())
    assert CHROMIUM is not None
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--enable-logging=stderr", "--v=0"]  # fmt: skip
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [*base, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    with tempfile.TemporaryDirectory() as profile:
        shot = subprocess.run(
            [*base, f"--user-data-dir={profile}", f"--screenshot={tmp_path / 'shot.png'}",
             "--window-size=1280,2000", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert dom.returncode == 0 and shot.returncode == 0, dom.stderr[-2000:] + shot.stderr[-2000:]
    # The browser's DOM holds the page's content: it parsed and laid out what was written.
    for text in ("Ship candidate", "Primary metric: correct", "Exposures per day",
                 "Sample ratio (SRM)", "Sample size", "Segments", "The plan it was judged against",
                 "tier"):  # fmt: skip
        assert text in dom.stdout, text
    assert dom.stdout.count("<svg") == 3
    console = [line for line in dom.stderr.splitlines() + shot.stderr.splitlines()
               if "CONSOLE" in line or "Uncaught" in line or "Failed to load" in line]  # fmt: skip
    assert not console, console
    png = (tmp_path / "shot.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 50_000  # a page, not a blank
