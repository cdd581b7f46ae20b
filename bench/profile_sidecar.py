"""Profile one sidecar under the hop part's c=16 load with py-spy; print where its time goes.

    .venv/bin/pip install py-spy          # a tool, not a project dependency
    python -m bench.profile_sidecar [--api kserve|native] [--seconds 15] [--out DIR]

Starts Redis (digits flag), Triton on CPU and a sidecar, drives 16 asyncio callers through the
chosen API while ``py-spy record --format raw`` samples the sidecar, then prints the functions with
the most samples: "self" (the frame was running) and "total" (anywhere on the stack), as a share
of all non-idle samples. The collapsed stacks stay in ``--out`` (default bench/results/profile)
for flame-graph tools.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from bench.common import ROOT
from bench.hop import KSERVE, NATIVE, Endpoint, concurrency_n
from bench.servers import sidecar, stack


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    return found


def summarise(collapsed: Path, top: int) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed (raw) output."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")[1:]  # the first entry names the thread
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
    out = [f"{total} samples (idle excluded)", "", "self %  function"]
    out += [f"{100 * n / total:6.1f}  {f}" for f, n in own.most_common(top)]
    out += ["", "total % function"]
    out += [f"{100 * n / total:6.1f}  {f}" for f, n in anywhere.most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--api", choices=("kserve", "native"), default="kserve")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument(
        "--native", action="store_true", help="Include C/Cython frames (grpc, uvloop)."
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "profile")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    collapsed = args.out / f"sidecar-{args.api}{'-native' if args.native else ''}.txt"
    with ExitStack() as exits:
        st = exits.enter_context(stack())
        side = exits.enter_context(sidecar(st.redis.url, st.triton.grpc_url))
        endpoint = Endpoint(KSERVE if args.api == "kserve" else NATIVE, side.address, side.pid)
        asyncio.run(concurrency_n(endpoint, 500, 10.0))  # warm-up
        # The load outlasts the recording; both are bounded by --seconds.
        load = threading.Thread(
            target=lambda: asyncio.run(concurrency_n(endpoint, 10_000_000, args.seconds + 3)),
            daemon=True,
        )
        load.start()
        recorder = subprocess.run(
            [py_spy(), "record", "-p", str(side.pid), "-d", str(int(args.seconds)),
             "-r", str(args.rate), "-f", "raw", "-o", str(collapsed),
             *(["--native"] if args.native else ["--nonblocking"])],
            capture_output=True, text=True, timeout=args.seconds + 60,
        )  # fmt: skip
        load.join(timeout=args.seconds + 30)
        if recorder.returncode != 0:
            raise SystemExit(f"py-spy failed: {recorder.stderr.strip()[-2000:]}")
    text = summarise(collapsed, args.top)
    collapsed.with_name(collapsed.stem + "-top.txt").write_text(text + "\n")
    print(text)
    print(f"\ncollapsed stacks: {collapsed} ({time.strftime('%H:%M:%S')})")


if __name__ == "__main__":
    main()
