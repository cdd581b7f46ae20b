"""The in-process client's snippets in README.md and docs/inprocess.md run as written, against a
real redis-server (the demo flag applied) and a real tritonserver at the documented addresses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from servers import RedisServer
from support import ROOT, digits_flag
from triton_harness import TritonServer

from flags.admin import FlagAdmin
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys
from flags.schema import parse_flag

pytestmark = [pytest.mark.redis, pytest.mark.triton]

DOCUMENTED_REDIS = "redis://127.0.0.1:6379/0"
DOCUMENTED_TRITON = "127.0.0.1:8001"


def inproc_blocks(path: Path) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    return [code for code in blocks if "InProcessClient" in code]


SNIPPETS = [
    pytest.param(code, id=f"{doc}#{i}")
    for doc in ("README.md", "docs/inprocess.md")
    for i, code in enumerate(inproc_blocks(ROOT / doc))
]


def test_both_docs_show_the_client() -> None:
    assert {p.id.split("#")[0] for p in SNIPPETS} == {"README.md", "docs/inprocess.md"}


@pytest.mark.parametrize("code", SNIPPETS)
def test_snippet_runs(code: str, fresh_redis: RedisServer, triton_server: TritonServer) -> None:
    assert DOCUMENTED_REDIS in code and DOCUMENTED_TRITON in code
    FlagAdmin(sync_client(fresh_redis.url), keys=RedisKeys()).apply(
        parse_flag(digits_flag()), reason="docs snippet"
    )
    script = code.replace(DOCUMENTED_REDIS, fresh_redis.url).replace(
        DOCUMENTED_TRITON, triton_server.grpc_url
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^(control|candidate) [12] None exposed \[\[\d\]\]$", result.stdout, re.M)
