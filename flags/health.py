"""What the store reports about its flags: the fields health checks and metrics read.

Staleness has three causes, reported together in ``stale_reason``:

* the source cannot be read (``source_status`` ``unreachable``),
* the source refuses our credentials or permissions (``source_status`` ``auth``): a
  configuration error, never reported as "unreachable",
* flags whose documents disappeared without a ``flagctl delete`` (``missing_flags``): data loss
  (a Redis restarted empty, a failover to an empty replica, a raw ``DEL``), so the last good
  version keeps serving. ``data_loss_total`` counts each flag found missing (once per episode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class SourceStatus(StrEnum):
    OK = "ok"
    UNREACHABLE = "unreachable"
    AUTH = "auth"


@dataclass(frozen=True, slots=True)
class Rejection:
    """The last invalid document of a flag (or of a whole file, keyed by its path)."""

    key: str
    reason: str
    at: float
    issues: tuple[str, ...] = ()


@dataclass
class StoreHealth:
    """What health checks and metrics report about the flag state (exported by the sidecar)."""

    loaded: bool = False
    stale: bool = False
    stale_reason: str | None = None
    last_sync_at: float | None = None
    rejected_total: int = 0
    rejections: dict[str, Rejection] = field(default_factory=dict)
    source_status: SourceStatus = SourceStatus.OK
    source_error: str | None = None
    missing_flags: tuple[str, ...] = ()
    data_loss_total: int = 0
    started_from_snapshot: str | None = None

    def refresh(self) -> None:
        """Recompute ``stale``/``stale_reason`` from their causes."""
        reasons = []
        if self.source_status is not SourceStatus.OK:
            reasons.append(self.source_error or str(self.source_status))
        if self.missing_flags:
            reasons.append(
                "flag documents missing without a `flagctl delete` (data loss?), serving their "
                f"last good version: {', '.join(self.missing_flags)}"
            )
        if self.started_from_snapshot:
            reasons.append(self.started_from_snapshot)
        self.stale = bool(reasons)
        self.stale_reason = "; ".join(reasons) or None
