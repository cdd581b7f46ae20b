"""``make demo`` end to end (fewer users): a real sidecar on the embedded defaults, tracked
outcomes written to its events file, then ``flagctl report`` prints a verdict and writes the page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import ROOT

VERDICTS = ("SHIP CANDIDATE", "KEEP RUNNING", "DO NOT SHIP", "INVALID")


def test_the_demo_ends_with_a_verdict_and_an_html_report(tmp_path: Path) -> None:
    page = tmp_path / "demo-report.html"
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.demo", "--users", "600", "--html", str(page)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "1200 outcomes tracked" in out  # correct and latency_ms for each of 600 users
    assert "ingested 1800 events (600 new exposures, 1200 new outcomes)" in " ".join(out.split())
    assert any(v in out for v in VERDICTS), out[-2000:]
    assert " ".join(out.split()).endswith(f"HTML report: {page}")
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "Experiment report: digits" in text
    assert "Traceback" not in done.stderr
