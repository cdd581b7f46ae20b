"""Telling people: a structured log line and a webhook POST for every automatic decision.

The webhook body is Slack-compatible (``{"text": ...}``) plus the structured fields, so a Slack
incoming webhook shows the message and any other receiver gets the evidence. POSTs run on a
small thread pool with a bounded timeout: a slow or dead receiver never delays a rollback, and a
failure is logged, not raised.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger("trafficsplit.rollout")


def log_event(event: str, **fields: Any) -> None:
    """One JSON object per line: what log pipelines index without parsing prose."""
    log.warning(json.dumps({"event": event, **fields}, sort_keys=True, default=str))


def slack_payload(text: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    return {"text": text, **fields}


class Webhooks:
    def __init__(self, *, timeout_s: float = 2.0, max_workers: int = 2) -> None:
        self._timeout = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="webhook")

    def post(self, url: str, payload: Mapping[str, Any]) -> Future[bool]:
        """Queue the POST and return at once; the future says whether it was delivered."""
        return self._pool.submit(self._send, url, dict(payload))

    def _send(self, url: str, payload: dict[str, Any]) -> bool:
        body = json.dumps(payload, default=str).encode()
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                ok = bool(200 <= response.status < 300)
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused, HTTP errors
            log_event("webhook_failed", url=url, error=f"{type(exc).__name__}: {exc}")
            return False
        if not ok:
            log_event("webhook_failed", url=url, error=f"HTTP {response.status}")
        return ok

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
