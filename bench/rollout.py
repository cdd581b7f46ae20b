"""Automatic rollback, end to end: time from a candidate starting to fail to the flag write.

A real stack: redis-server, tritonserver (CPU) whose digits v2 fails every request while a marker
file exists, a sidecar recording signals, and a ``trafficsplit-controller`` process with its
defaults (1 s tick). A paced load of ~200 req/s from random users runs through the sidecar. Each
trial starts a rollout (steps 1, 5, 20, 50, 100 %), waits for the 5 % step, makes v2 fail, and
measures from the marker's creation (the first request v2 gets after it fails; at 10 req/s on
the candidate that is within ~0.1 s, so the figure slightly over-states the time) to the ``at`` of
the controller's flag write in the audit stream. Compared with Flagger's documented analysis
(``interval`` 1 m x ``threshold`` 1 to 10 failed checks: 60 to 600 s). The e2e test
``tests/e2e/test_rollout_e2e.py`` runs the same scenario once and asserts the 10 s goal.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    ROOT,
    BackgroundLoop,
    RedisServer,
    TritonServer,
    build_python_backend_repository,
    stop_process,
)
from bench.report import Metric, PartReport
from bench.servers import DIGITS_FLAG, PREFIX, sidecar
from flags.admin import FlagAdmin
from flags.mutations import share
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from flags.schema import parse_flag
from rollout.state import Phase, RolloutState
from rollout.store import RolloutStore, state_key

ROW = "trafficsplit-controller (1 s tick)"
FLAGGER = "Flagger (interval 60 s x threshold 1..10)"
STEPS = [1.0, 5.0, 20.0, 50.0, 100.0]
# Metrics, to see when the candidate's circuit (opened by the last trial) is no longer open.
SIDECAR_ARGS = ("--metrics-listen", "127.0.0.1:0", "--breaker-cool-down-s", "1")


@dataclass
class PacedLoad(BackgroundLoop):
    """``rate`` requests a second from random users; records every answer and every error."""

    url: str
    rate: float = 200.0
    users: int = 5000
    served: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    late: int = 0  # sends skipped because the machine fell behind the pace
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    async def _run(self) -> None:
        client = triton_aio.InferenceServerClient(self.url)
        inputs = [triton_grpc.InferInput("pixels", [1, 64], "FP32")]
        inputs[0].set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
        limit = asyncio.Semaphore(64)
        rng = random.Random(7)
        tasks: set[asyncio.Task[None]] = set()

        async def call(user: str) -> None:
            try:
                result = await client.infer(
                    "digits", inputs, headers={"x-user-id": user}, client_timeout=10
                )
                version = result.get_response().model_version
                self.served[version] = self.served.get(version, 0) + 1
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                limit.release()

        period = 1.0 / self.rate
        due = time.monotonic()
        try:
            while not self.stop.is_set():
                due += period
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.05:
                    self.late += 1
                    continue
                await limit.acquire()
                task = asyncio.create_task(call(f"user-{rng.randrange(self.users)}"))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await client.close()


class ControllerProcess:
    """A ``trafficsplit-controller`` child process; stopped (or killed) by PID."""

    def __init__(self, redis_url: str, replica: str, log: Path, *extra: str) -> None:
        self.replica = replica
        args = [sys.executable, "-m", "rollout.main", "--redis-url", redis_url, "--prefix",
                PREFIX, "--replica", replica, "--metrics-port", "0", *extra]  # fmt: skip
        with log.open("ab") as out:
            self.proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        stop_process(self.proc)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@dataclass
class Stack:
    redis: Any
    triton: Any
    sidecar: Any
    admin: FlagAdmin
    store: RolloutStore
    fail_file: Path
    workdir: Path
    load: PacedLoad
    exits: ExitStack


def rollout_flag(
    hold_s: float,
    min_requests: int | None,
    share: float = 0.0,
    golden: bool = False,
    guardrails: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The demo flag, ramped by the controller, with the default guardrails (and ``min_requests``
    lowered when given, so a healthy ramp's 1 % step passes in seconds; ``guardrails`` overrides
    more); with ``golden``, the controller runs the golden set before the first step."""
    doc: dict[str, Any] = json.loads(DIGITS_FLAG.read_text())
    doc.update(
        rules=[],
        allocation={"coverage": 100, "split": {"control": 100 - share, "candidate": share}},
        ramp={"variant": "candidate", "steps": STEPS, "hold_seconds": hold_s},
        guardrails={
            **({} if min_requests is None else {"min_requests": min_requests}),
            **(guardrails or {}),
        },
    )
    doc.pop("shadow", None)
    if golden:
        doc["golden"] = {"max_accuracy_drop": 0.01}
    doc.pop("experiment", None)  # rollbacks are measured without exposure recording
    return doc


@contextmanager
def failing_stack(rate: float = 200.0, workdir: Path | None = None) -> Iterator[Stack]:
    with ExitStack() as exits:
        if workdir is None:
            workdir = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="rollout-")))
        redis = RedisServer(workdir / "redis").start()
        exits.callback(redis.stop)
        fail_file = workdir / "v2-fails"
        repo = build_python_backend_repository(
            workdir / "models", (1, 2), fail_files={2: fail_file}
        )
        triton = exits.enter_context(TritonServer(repo, ready_timeout_s=120))
        client = sync_client(redis.url)
        exits.callback(client.close)
        keys = RedisKeys(PREFIX)
        admin = FlagAdmin(client, keys=keys, actor="bench")
        admin.apply(parse_flag(rollout_flag(1.0, 10)), reason="setup", force=True)
        side = exits.enter_context(
            sidecar(redis.url, triton.grpc_url, log_dir=workdir, extra=SIDECAR_ARGS)
        )
        load = PacedLoad(side.address, rate=rate)
        load.start()
        exits.callback(load.close)
        store = RolloutStore(client, keys=keys, actor="bench")
        yield Stack(redis, triton, side, admin, store, fail_file, workdir, load, exits)


def wait(condition: Any, *, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)  # polling interval; the deadline bounds the wait
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def circuit_open(st: Stack, target: str = "digits:2") -> bool:
    text = urlopen(st.sidecar.metrics_url, timeout=5).read().decode()
    return any(
        s.labels == {"target": target, "state": "open"} and s.value == 1
        for family in text_string_to_metric_families(text)
        for s in family.samples
    )


def start_rollout(
    st: Stack,
    *,
    hold_s: float = 1.0,
    min_requests: int | None = 10,
    at_step: int = -1,
    golden: bool = False,
    guardrails: dict[str, Any] | None = None,
) -> None:
    """A fresh flag and a pending rollout (what `flagctl rollout start` writes).

    Waits until the sidecar's circuit for v2 (opened by a previous trial's failures) is no longer
    open: until then the sidecar would skip v2 and count it failed, rightly rolling back again.
    """
    st.fail_file.unlink(missing_ok=True)
    wait(lambda: not circuit_open(st), timeout=30, what="the candidate's circuit to cool down")
    share = STEPS[at_step] if at_step >= 0 else 0.0
    doc = rollout_flag(hold_s, min_requests, share, golden, guardrails)
    st.admin.apply(parse_flag(doc), reason="trial", force=True)
    st.admin.client.delete(state_key(RedisKeys(PREFIX), "digits"))
    now = time.time()
    state = RolloutState(
        flag="digits",
        variant="candidate",
        phase=Phase.RUNNING if at_step >= 0 else Phase.PENDING,
        steps=STEPS,
        step=at_step,
        step_started_at=now if at_step >= 0 else None,
        started_at=now,
    )
    st.store.write(state, None, action="rollout.start", reason="trial")


def state(st: Stack) -> RolloutState | None:
    stored = st.store.get("digits")
    return None if stored is None else stored.state


def candidate_share(st: Stack) -> float:
    spec = st.admin.get("digits").spec
    return share(spec, "candidate") if spec is not None else -1.0


@dataclass
class Trial:
    seconds: float  # from the candidate failing to the controller's flag write
    user_errors: int
    evidence: dict[str, Any]


def short_window_attempts(st: Stack) -> int:
    current = state(st)
    verdict = (current.last_verdict or {}) if current else {}
    return int((verdict.get("candidate_short") or {}).get("attempts") or 0)


def rollback_trial(
    st: Stack,
    *,
    timeout: float = 60.0,
    fault: str = "",
    guardrails: dict[str, Any] | None = None,
) -> Trial:
    """A rollout at its 5 % step (as the controller leaves it; the flag's default guardrails and
    a 10 min hold), healthy until the short window is full, then v2 breaks: measured until the
    rollback's flag write. ``fault``: "" fails every v2 request; "sleep S" makes v2 S s slow."""
    start_rollout(st, hold_s=600.0, min_requests=None, at_step=1, guardrails=guardrails)
    errors_before = len(st.load.errors)
    healthy = 0.8 * st.load.rate * STEPS[1] / 100 * 10  # 80 % of 10 s at the candidate's rate
    wait(lambda: short_window_attempts(st) >= healthy, timeout=timeout, what="10 s of traffic")
    failed_at = time.time()
    st.fail_file.write_text(fault)
    try:
        wait(
            lambda: (s := state(st)) is not None and s.phase is Phase.ROLLED_BACK,
            timeout=timeout,
            what="the automatic rollback",
        )
    finally:
        st.fail_file.unlink(missing_ok=True)
    entries = st.admin.audit("digits", limit=50)
    write = next(e for e in entries if e.fields.get("action") == "rollout.rollback")
    decision = next(e for e in entries if e.fields.get("action") == "rollout.rolled_back")
    written_at = datetime.fromisoformat(write.fields["at"]).timestamp()
    return Trial(
        written_at - failed_at,
        len(st.load.errors) - errors_before,
        json.loads(decision.fields["evidence"]),
    )


def run(*, rounds: int = 5, rate: float = 200.0) -> PartReport:
    part = PartReport(
        name="rollout",
        title="Automatic rollback: candidate starts failing at the 5 % step -> flag write",
        metrics=[
            Metric("seconds", "time to rollback s", 1),
            Metric("user_errors", "errors users saw", 0),
        ],
    )
    part.params = {"rounds": rounds, "rate_rps": rate, "step": "5 %", "tick_s": 1.0}
    with failing_stack(rate) as st:
        controller = ControllerProcess(st.redis.url, "bench", st.workdir / "controller.log")
        st.exits.callback(controller.stop)
        for _ in range(rounds):
            trial = rollback_trial(st)
            part.add(ROW, "seconds", trial.seconds)
            part.add(ROW, "user_errors", trial.user_errors)
        for threshold in (1, 10):
            part.add(FLAGGER, "seconds", 60.0 * threshold)
        part.info["load"] = {"served": dict(st.load.served), "late_sends": st.load.late}
    values = part.rows[ROW]["seconds"]
    ordered = sorted(values)
    part.info["rollback_s"] = {
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[-1],  # nearest rank: with < 100 trials p99 is the worst one
        "all": values,
    }
    part.target("rollback after failure (p99)", ordered[-1], "<=", 10.0, "s")
    part.notes.append(
        "Flagger rows are its documented analysis (interval 1m x threshold 1 to 10), not measured"
    )
    return part


def golden_line(verdict: str, detail: dict[str, Any]) -> str:
    colour = "green" if verdict == "pass" else "red"
    control, candidate = detail.get("control") or {}, detail.get("candidate") or {}
    return (
        f"[{colour}]{verdict}[/]: v{control.get('version')} accuracy "
        f"{control.get('accuracy', 0):.4f}, v{candidate.get('version')} "
        f"{candidate.get('accuracy', 0):.4f}, agreement {detail.get('agreement', 0):.4f} "
        f"({detail.get('samples')} samples each on {detail.get('backend')})"
    )


def demo() -> None:
    """``make demo-rollout``: a healthy candidate ramps to 100 %, a broken one is rolled back."""
    from rich.console import Console

    console = Console(highlight=False)
    console.print("[bold]starting redis-server, tritonserver (CPU), a sidecar, 200 req/s...[/]")
    with failing_stack(200.0) as st:
        controller = ControllerProcess(
            st.redis.url, "demo", st.workdir / "controller.log", "--triton-url", st.triton.grpc_url
        )
        st.exits.callback(controller.stop)
        console.print(
            "[bold]1. a healthy candidate[/] (golden set on Triton first, then steps "
            "1-5-20-50-100 %, 2 s holds)"
        )
        start_rollout(st, hold_s=2.0, min_requests=10, golden=True)
        shown, gated = -1.0, False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            current = state(st)
            golden = current.gates.get("golden") if current is not None else None
            if golden is not None and golden.verdict != "wait" and not gated:
                gated = True
                console.print(f"   golden gate: {golden_line(golden.verdict, golden.detail)}")
            if current is not None and current.phase is Phase.PROMOTED:
                console.print("   [green]promoted[/]: v2 is the default variant")
                break
            pct = candidate_share(st)
            if pct != shown:
                console.print(f"   candidate share now {pct:g} %  (served: {dict(st.load.served)})")
                shown = pct
            time.sleep(0.2)  # display refresh, not synchronisation
        console.print("[bold]2. a candidate that starts failing at the 5 % step[/]")
        trial = rollback_trial(st)
        fired = ", ".join(f["message"] for f in trial.evidence.get("fired", []))
        console.print(
            f"   [red]rolled back[/] {trial.seconds:.1f} s after v2 started failing; "
            f"users who saw an error: {trial.user_errors}\n   evidence: {fired}"
        )


if __name__ == "__main__":  # python -m bench.rollout [--demo]: a quick look
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if "--demo" in sys.argv:
        demo()
    else:
        print(json.dumps(run(rounds=1).to_json(), indent=2))
