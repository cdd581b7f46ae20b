"""Flag propagation: from a write (``flagctl``'s code path, or a raw ``redis-cli SET``) until N
separate watcher processes (each a full :class:`flags.store.FlagStore` fed by
:class:`flags.sources.RedisFlagSource`, as in a sidecar) have applied it.

    python -m bench.propagation --changes 200 --watchers 4      # this part alone
    python -m bench --only propagation                          # in the suite

Latency per change is the slowest watcher's ``applied_at`` minus the time just before the write;
all processes share this machine's clock. The baseline is the floor under any of it: a bare Redis
``PUBLISH`` until N plain redis-py subscriber processes have printed it. In the suite, each round
runs its share of the baseline, the flagctl changes and the raw SETs in turn; the targets are on
the p99 over every change of the run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bench.common import ROOT, RedisServer, read_line, stop_process, wait_until
from bench.report import Metric, PartReport, percentile
from flags.admin import FlagAdmin
from flags.mutations import ramp
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from flags.schema import FlagSpec, parse_flag

FLAG = json.loads((ROOT / "deploy" / "flags" / "digits.json").read_text())
BASELINE_CHANNEL = "bench:baseline"

# A bare subscriber: one JSON line per message with the time it arrived (the baseline's watcher).
SUBSCRIBER = """
import json, sys, time, redis
pubsub = redis.Redis.from_url(sys.argv[1]).pubsub(ignore_subscribe_messages=True)
pubsub.subscribe(sys.argv[2])
print(json.dumps({"ready": True}), flush=True)
for message in pubsub.listen():
    print(json.dumps({"revision": int(message["data"]), "applied_at": time.time()}), flush=True)
"""


@dataclass
class Watcher:
    proc: subprocess.Popen[str]
    applied: dict[int, float]

    @classmethod
    def start(cls, url: str, prefix: str) -> Watcher:
        return cls._spawn(
            [sys.executable, "-u", "-m", "flags.cli", "--redis-url", url, "--prefix", prefix,
             "watch", "--timestamps"]
        )  # fmt: skip

    @classmethod
    def subscriber(cls, url: str, channel: str) -> Watcher:
        return cls._spawn([sys.executable, "-u", "-c", SUBSCRIBER, url, channel])

    @classmethod
    def _spawn(cls, argv: list[str]) -> Watcher:
        proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        watcher = cls(proc, {})
        try:
            json.loads(read_line(proc, timeout=30, what="watcher ready line"))
        except BaseException:
            stop_process(proc)
            raise
        assert proc.stdout is not None
        threading.Thread(target=watcher._read, args=(proc.stdout,), daemon=True).start()
        return watcher

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            event = json.loads(line)
            if event.get("revision") is not None:
                self.applied[int(event["revision"])] = float(event["applied_at"])


def _await_all(watchers: list[Watcher], revision: int, timeout: float) -> float:
    """The latest ``applied_at`` of ``revision`` over every watcher, polling with a deadline."""

    def seen() -> bool:
        return all(revision in w.applied for w in watchers)

    wait_until(seen, timeout=timeout, interval=0.0005, what=f"revision {revision} everywhere")
    return max(w.applied[revision] for w in watchers)


def _ramp_to(percent: int) -> Callable[[FlagSpec], FlagSpec]:
    def edit(spec: FlagSpec) -> FlagSpec:
        return ramp(spec, "candidate", percent)

    return edit


def measure(url: str, prefix: str, changes: int, watchers: list[Watcher], raw: bool) -> list[float]:
    keys = RedisKeys(prefix)
    admin = FlagAdmin(sync_client(url), keys=keys, actor="bench")
    client = sync_client(url)
    latencies = []
    for i in range(changes):
        stored = admin.get("digits")
        assert stored.spec is not None
        revision = (stored.revision or 0) + 1
        percent = (i % 99) + 1
        started = time.time()
        if raw:  # what an operator typing redis-cli SET does: no publish, no audit
            doc = ramp(stored.spec, "candidate", percent).to_document()
            doc["revision"] = revision
            client.set(keys.flag("digits"), json.dumps(doc))
        else:  # epoch revisions (flags.revisions): the write says which revision it stored
            revision = admin.update(
                "digits", _ramp_to(percent), action="ramp", reason="bench"
            ).revision
        latencies.append(_await_all(watchers, revision, timeout=5) - started)
    return latencies


def measure_baseline(
    url: str, messages: int, subscribers: list[Watcher], first: int
) -> list[float]:
    """Bare PUBLISH -> every subscriber process has printed it."""
    client = sync_client(url)
    latencies = []
    for n in range(first, first + messages):
        started = time.time()
        client.publish(BASELINE_CHANNEL, str(n))
        latencies.append(_await_all(subscribers, n, timeout=5) - started)
    return latencies


def summarise(name: str, latencies: list[float]) -> dict[str, Any]:
    ms = [x * 1000 for x in latencies]
    return {"path": name, "changes": len(ms), "p50_ms": statistics.median(ms),
            "p99_ms": percentile(ms, 99), "max_ms": max(ms)}  # fmt: skip


def _setup(url: str, prefix: str) -> None:
    admin = FlagAdmin(sync_client(url), keys=RedisKeys(prefix), actor="bench")
    admin.apply(parse_flag(FLAG), reason="bench setup", force=True)


def measure_rows(changes: int, watchers: int, raw_changes: int) -> list[dict[str, Any]]:
    """The standalone CLI: one pass of flagctl changes, then raw SETs."""
    with _redis_and_watchers(watchers, subscribers=0) as (server, prefix, procs, _):
        rows = [
            summarise(
                f"flagctl -> {watchers} stores",
                measure(server.url, prefix, changes, procs, False),
            )
        ]
        if raw_changes:
            rows.append(
                summarise(
                    f"raw SET -> {watchers} stores",
                    measure(server.url, prefix, raw_changes, procs, True),
                )
            )
        return rows


@contextmanager
def _redis_and_watchers(
    watchers: int, *, subscribers: int
) -> Iterator[tuple[Any, str, list[Watcher], list[Watcher]]]:
    """A throw-away Redis with the digits flag, ``watchers`` store processes and ``subscribers``
    bare pub/sub processes; all stopped by PID on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        stores: list[Watcher] = []
        listeners: list[Watcher] = []
        try:
            prefix = "bench:"
            _setup(server.url, prefix)
            stores = [Watcher.start(server.url, prefix) for _ in range(watchers)]
            listeners = [
                Watcher.subscriber(server.url, BASELINE_CHANNEL) for _ in range(subscribers)
            ]
            yield server, prefix, stores, listeners
        finally:
            for w in stores + listeners:
                stop_process(w.proc)
            server.stop()


def _split(total: int, rounds: int) -> list[int]:
    return [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]


def run(
    *, changes: int = 200, raw_changes: int = 20, watchers: int = 4, rounds: int = 4
) -> PartReport:
    """The suite's part: baseline, flagctl and raw SET alternate in ``rounds`` rounds."""
    baseline = f"baseline: PUBLISH -> {watchers} subscribers"
    via_flagctl = f"flagctl -> {watchers} watchers"
    via_raw = f"raw SET -> {watchers} watchers"
    part = PartReport(
        name="propagation",
        title="Flag change visible in every watcher process (FlagStore + RedisFlagSource)",
        metrics=[
            Metric("changes", "changes", 0),
            Metric("p50_ms", "p50 ms", 2),
            Metric("p99_ms", "p99 ms", 2),
            Metric("max_ms", "max ms", 2),
        ],
        params={"changes": changes, "raw_changes": raw_changes, "watchers": watchers,
                "rounds": rounds},
    )  # fmt: skip
    pooled: dict[str, list[float]] = {baseline: [], via_flagctl: [], via_raw: []}
    with _redis_and_watchers(watchers, subscribers=watchers) as (
        server,
        prefix,
        stores,
        subscribers,
    ):
        published = 0
        for n_changes, n_raw in zip(
            _split(changes, rounds), _split(raw_changes, rounds), strict=True
        ):
            for row, count in (
                (baseline, n_changes),
                (via_flagctl, n_changes),
                (via_raw, n_raw),
            ):
                if not count:
                    continue
                if row == baseline:
                    seconds = measure_baseline(server.url, count, subscribers, published)
                else:
                    seconds = measure(server.url, prefix, count, stores, row == via_raw)
                ms = [x * 1000 for x in seconds]
                if row == baseline:
                    published += count
                pooled[row] += ms
                part.add(row, "changes", len(ms))
                part.add(row, "p50_ms", statistics.median(ms))
                part.add(row, "p99_ms", percentile(ms, 99))
                part.add(row, "max_ms", max(ms))
    for row, ms in pooled.items():
        if ms:
            part.info[row] = summarise(row, [x / 1000 for x in ms])
            pooled_row = f"  (all {len(ms)} pooled)"
            part.add(row + pooled_row, "changes", len(ms))
            part.add(row + pooled_row, "p50_ms", statistics.median(ms))
            part.add(row + pooled_row, "p99_ms", percentile(ms, 99))
            part.add(row + pooled_row, "max_ms", max(ms))
    flagctl_p99 = part.info.get(via_flagctl, {}).get("p99_ms")
    raw_p99 = part.info.get(via_raw, {}).get("p99_ms")
    part.target("flagctl p99 (pooled)", flagctl_p99, "<=", 20.0, " ms")
    if raw_changes:
        part.target("raw SET p99 (pooled)", raw_p99, "<=", 1000.0, " ms")
    part.notes.append(
        "watchers are `flagctl watch` processes: the same FlagStore + RedisFlagSource a sidecar "
        "runs; a raw SET is not announced, so the reconcile timer (0.5 s) finds it"
    )
    return part


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'path':<24} {'changes':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for r in rows:
        print(f"{r['path']:<24} {r['changes']:>8} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--raw-changes", type=int, default=20)
    parser.add_argument("--watchers", type=int, default=1)
    parser.add_argument("--json", type=Path, help="Also write the rows to this JSON file.")
    args = parser.parse_args()
    rows = measure_rows(args.changes, args.watchers, args.raw_changes)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
