"""Flag propagation: from a write (``flagctl``'s code path, or a raw ``redis-cli SET``) until N
separate watcher processes (each a full :class:`flags.store.FlagStore` fed by
:class:`flags.sources.RedisFlagSource`, as in a sidecar) have applied it.

    python -m bench.propagation --changes 200 --watchers 4

Latency per change is the slowest watcher's ``applied_at`` minus the time just before the write;
all processes share this machine's clock.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from flags.admin import FlagAdmin
from flags.mutations import ramp
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from flags.schema import parse_flag

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from servers import RedisServer, stop_process, wait_until  # noqa: E402

FLAG = json.loads((ROOT / "deploy" / "flags" / "digits.json").read_text())


@dataclass
class Watcher:
    proc: subprocess.Popen[str]
    applied: dict[int, float]

    @classmethod
    def start(cls, url: str, prefix: str) -> Watcher:
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "flags.cli", "--redis-url", url, "--prefix", prefix,
             "watch", "--timestamps"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        watcher = cls(proc, {})
        assert proc.stdout is not None
        json.loads(proc.stdout.readline())  # the "ready" line
        threading.Thread(target=watcher._read, args=(proc.stdout,), daemon=True).start()
        return watcher

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            event = json.loads(line)
            if event.get("revision") is not None:
                self.applied[int(event["revision"])] = float(event["applied_at"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def measure(url: str, prefix: str, changes: int, watchers: list[Watcher], raw: bool) -> list[float]:
    keys = RedisKeys(prefix)
    admin = FlagAdmin(sync_client(url), keys=keys, actor="bench")
    client = sync_client(url)
    latencies = []
    for i in range(changes):
        stored = admin.get("digits")
        assert stored.spec is not None
        revision = (stored.revision or 0) + 1
        started = time.time()
        if raw:  # what an operator typing redis-cli SET does: no publish, no audit
            doc = ramp(stored.spec, "candidate", (i % 99) + 1).to_document()
            doc["revision"] = revision
            client.set(keys.flag("digits"), json.dumps(doc))
        else:
            admin.update("digits", lambda s, p=(i % 99) + 1: ramp(s, "candidate", p),
                         action="ramp", reason="bench")
        wait_until(lambda: all(revision in w.applied for w in watchers), timeout=5,
                   interval=0.0005, what=f"revision {revision} in every watcher")
        latencies.append(max(w.applied[revision] for w in watchers) - started)
    return latencies


def summarise(name: str, latencies: list[float]) -> dict[str, Any]:
    ms = [x * 1000 for x in latencies]
    return {"path": name, "changes": len(ms), "p50_ms": statistics.median(ms),
            "p99_ms": percentile(ms, 99), "max_ms": max(ms)}


def run(changes: int, watchers: int, raw_changes: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        procs: list[Watcher] = []
        try:
            prefix = "bench:"
            admin = FlagAdmin(sync_client(server.url), keys=RedisKeys(prefix), actor="bench")
            admin.apply(parse_flag(FLAG), reason="bench setup")
            procs = [Watcher.start(server.url, prefix) for _ in range(watchers)]
            rows = [summarise(f"flagctl -> {watchers} stores", measure(server.url, prefix, changes, procs, False))]
            if raw_changes:
                rows.append(summarise(f"raw SET -> {watchers} stores",
                                      measure(server.url, prefix, raw_changes, procs, True)))
            return rows
        finally:
            for w in procs:
                stop_process(w.proc)
            server.stop()


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'path':<24} {'changes':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for r in rows:
        print(f"{r['path']:<24} {r['changes']:>8} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--raw-changes", type=int, default=20)
    parser.add_argument("--watchers", type=int, default=1)
    parser.add_argument("--json", type=Path, help="Also write the rows to this JSON file.")
    args = parser.parse_args()
    rows = run(args.changes, args.watchers, args.raw_changes)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
