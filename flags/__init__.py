"""Feature flags for model routing: the flag model, sticky assignment, sources and the store.

Pure core (``schema``, ``compiled``, ``snapshot.evaluate``) with I/O in ``sources`` and ``admin``.
This package never imports ``sidecar``, grpc, tritonclient or opentelemetry.
"""

from flags.compiled import CompiledFlag
from flags.errors import (
    FlagNotFoundError,
    FlagsError,
    FlagValidationError,
    RevisionConflictError,
    StoreAuthError,
    StoreError,
    StoreUnavailableError,
    VariantError,
)
from flags.evaluation import ErrorCode, Reason, Resolution, Subject
from flags.schema import FlagSpec, Target, parse_flag
from flags.snapshot import EMPTY_SNAPSHOT, Snapshot, evaluate

__all__ = [
    "EMPTY_SNAPSHOT",
    "CompiledFlag",
    "ErrorCode",
    "FlagNotFoundError",
    "FlagSpec",
    "FlagValidationError",
    "FlagsError",
    "Reason",
    "Resolution",
    "RevisionConflictError",
    "Snapshot",
    "StoreAuthError",
    "StoreError",
    "StoreUnavailableError",
    "Subject",
    "Target",
    "VariantError",
    "evaluate",
    "parse_flag",
]
