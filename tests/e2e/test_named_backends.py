"""Several backends: version 1 on one real tritonserver, version 2 on another, one killed.

The flag's candidate names backend ``b`` (``--backend b=HOST:PORT``); the control stays on the
default backend (``--triton-url``). Fallback, the breaker, readiness and metrics are per backend.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from servers import wait_until
from support import ROOT, digits_flag, scrape
from triton_harness import TritonServer

from sidecar.launcher import SidecarProcess

PIXELS = np.zeros((1, 64), np.float32)


def documented_snippets() -> tuple[str, dict[str, Any]]:
    """The sidecar command and the flag's variants of the "Several backends" sections of the
    README and docs/operations.md (the same in both)."""
    found = []
    for doc in ("README.md", "docs/operations.md"):
        section = (ROOT / doc).read_text().split("## Several backends", 1)[1].split("\n## ", 1)[0]
        command = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0].strip()
        variants = json.loads(re.findall(r"```json\n(.*?)```", section, flags=re.S)[0])
        found.append((command, variants))
    assert found[0] == found[1], "README and docs/operations.md show different snippets"
    return found[0]


def infer(client: triton.InferenceServerClient, user: str) -> Any:
    tensor = triton.InferInput("pixels", [1, 64], "FP32")
    tensor.set_data_from_numpy(PIXELS)
    return client.infer("digits", [tensor], headers={"x-user-id": user}).get_response()


def test_version_2_on_its_own_triton_and_that_triton_killed(
    triton_v1_only: TritonServer, triton_v2_only: TritonServer, tmp_path: Path
) -> None:
    command, variants = documented_snippets()
    flag = digits_flag(rules=[], allocation={"split": {"control": 50, "candidate": 50}}, **variants)
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(flag))
    command = command.replace("triton-a:8001", triton_v1_only.grpc_url)
    command = command.replace("triton-b:8001", triton_v2_only.grpc_url)
    command = command.replace("flags.json", str(path))
    args = [*shlex.split(command)[1:], "--metrics-listen", "127.0.0.1:0"]
    with SidecarProcess(args, stderr_path=tmp_path / "sidecar.log") as sidecar:
        client = triton.InferenceServerClient(sidecar.address)
        users = [f"user-{i}" for i in range(40)]
        before = {u: infer(client, u) for u in users}
        candidates = [u for u, r in before.items() if r.parameters["trafficsplit.variant"].string_param == "candidate"]  # fmt: skip
        assert candidates and len(candidates) < len(users)
        assert {before[u].model_version for u in candidates} == {"2"}  # served by Triton b
        assert {r.model_version for u, r in before.items() if u not in candidates} == {"1"}

        triton_v2_only.kill()
        after = {u: infer(client, u) for u in users}  # no request fails
        assert {r.model_version for r in after.values()} == {"1"}
        assert {after[u].parameters["trafficsplit.fallback"].bool_param for u in candidates} == {
            True
        }
        ready = ("trafficsplit_version_ready", (("target", "b/digits:2"),))
        wait_until(
            lambda: scrape(sidecar.metrics_url).get(ready) == 0,
            timeout=10,
            what="b/digits:2 reported not ready",
        )
        metrics = scrape(sidecar.metrics_url)
        client.close()
    assert metrics[("trafficsplit_version_ready", (("target", "digits:1"),))] == 1
    failed_on_b = sum(
        v
        for (name, labels), v in metrics.items()
        if name == "trafficsplit_attempts_total"
        and ("backend", "b") in labels
        and ("result", "OK") not in labels
    )
    assert failed_on_b >= 1  # counted against version 2 on backend b
    log = (tmp_path / "sidecar.log").read_text()
    assert "not ready on backend 'b'" in log
