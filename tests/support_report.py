"""A synthetic two-week experiment on the demo flag, as a sidecar's ``--events-file`` would hold it
(import as ``from support_report import ...``): the report tests and the docs' screenshot use it.

Deterministic (fixed seed): a ramp from 20 % to 50 % on day 5 (two SRM phases), users in two
tiers, a binary primary metric where the candidate is better, and a latency guardrail.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from support import ROOT

from experiments.events.model import Event, Exposure, Outcome

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000
FLAG_FILE = ROOT / "deploy" / "flags" / "digits.json"


def two_weeks(
    users_per_day: int = 300,
    *,
    days: int = 14,
    p_control: float = 0.80,
    p_candidate: float = 0.85,
    seed: int = 11,
) -> list[Event]:
    rng = random.Random(seed)
    events: list[Event] = []
    for day in range(days):
        share = 20 if day < 4 else 50
        split = f"control={100 - share},candidate={share}"
        for i in range(users_per_day):
            user = f"d{day}-u{i}"
            at = T0 + day * DAY_MS + i * 1000
            variant = "candidate" if rng.random() * 100 < share else "control"
            tier = "pro" if rng.random() < 0.4 else "free"
            version = "2" if variant == "candidate" else "1"
            events.append(Exposure("digits", "digits", user, variant, version, at,
                                   (("tier", tier),), split))  # fmt: skip
            p = p_candidate if variant == "candidate" else p_control
            events.append(Outcome(f"c-{user}", "digits", "digits", user, "correct",
                                  float(rng.random() < p), at + 10))  # fmt: skip
            latency = rng.lognormvariate(0.0, 0.3) * (1.02 if variant == "candidate" else 1.0)
            events.append(Outcome(f"l-{user}", "digits", "digits", user, "latency_ms",
                                  latency, at + 10))  # fmt: skip
    return events


def write_events(path: Path, events: list[Event]) -> Path:
    path.write_text("".join(e.encode() + "\n" for e in events), encoding="utf-8")
    return path


def flag_file(path: Path, **experiment: Any) -> Path:
    """The demo flag with its experiment section changed by ``experiment`` (None: removed)."""
    doc = json.loads(FLAG_FILE.read_text())
    for name, value in experiment.items():
        if value is None:
            doc["experiment"].pop(name, None)
        else:
            doc["experiment"][name] = value
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path
