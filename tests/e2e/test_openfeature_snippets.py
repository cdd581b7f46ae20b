"""The OpenFeature snippets (```py blocks) in README.md and docs/openfeature.md run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from servers import RedisServer
from support import ROOT, digits_flag

from flags import parse_flag
from flags.admin import FlagAdmin
from flags.redis_conn import sync_client
from flags.redis_keys import RedisKeys

DOCUMENTED_REDIS = "redis://127.0.0.1:6379/0"


def py_blocks(path: Path) -> list[str]:
    # ```py (not ```python): tests/e2e/test_docs_snippets.py runs the ```python ones against a
    # sidecar; these need none, or a Redis.
    return re.findall(r"```py\n(.*?)```", path.read_text(), flags=re.S)


SNIPPETS = [
    pytest.param(code, id=f"{doc}#{i}")
    for doc in ("README.md", "docs/openfeature.md")
    for i, code in enumerate(py_blocks(ROOT / doc))
    if "TrafficSplitProvider" in code
]


def test_the_docs_have_openfeature_snippets() -> None:
    assert len(SNIPPETS) >= 3


@pytest.mark.redis
@pytest.mark.parametrize("code", SNIPPETS)
def test_snippet_runs(code: str, fresh_redis: RedisServer) -> None:
    keys = RedisKeys()  # the snippet uses the default prefix: a server of its own
    admin = FlagAdmin(sync_client(fresh_redis.url), keys=keys, actor="docs", url=fresh_redis.url)
    admin.apply(parse_flag(digits_flag()), reason="docs snippet", force=True)
    script = code.replace(DOCUMENTED_REDIS, fresh_redis.url)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"\bcandidate\b", result.stdout), result.stdout
