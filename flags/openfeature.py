"""An OpenFeature provider over the flag core: apps ask OpenFeature, get the sidecar's variant.

``pip install 'trafficsplit[openfeature]'`` (the ``openfeature-sdk``, no other dependency). This
module is the only one in ``flags`` that imports the SDK, and ``import flags`` does not import it.

The provider reads a :class:`~flags.store.FlagStore` (fed by ``RedisFlagSource``, a file, or
memory): the same validated, compiled snapshot the sidecar serves from, evaluated by the same pure
``flags.snapshot.evaluate``, so a user gets the same variant here as through the sidecar.

* ``get_object_details(key, default, ctx)``: the variant's target as a dict (model, version,
  parameters, and backend when it names one); ``get_string_details``: the variant name. Booleans and numbers: TYPE_MISMATCH.
* Reasons: DISABLED (kill switch), TARGETING_MATCH (a rule), SPLIT (the allocation), DEFAULT
  (outside coverage), STATIC (a flag with neither rules nor allocation), ERROR with FLAG_NOT_FOUND,
  TARGETING_KEY_MISSING, INVALID_CONTEXT, TYPE_MISMATCH or GENERAL; on ERROR the SDK hands the
  caller's default back, as OpenFeature specifies. Evaluation never raises.
* Flag metadata: ``revision`` (int), ``version`` (the revision as text: OpenFeature's well-known
  flag version, which telemetry reports as ``feature_flag.version``), ``model``, ``model_version``,
  ``exposed``, ``hashing``, and ``rule`` when a rule decided.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode as OFErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType
from openfeature.flag_evaluation import Reason as OFReason
from openfeature.provider import AbstractProvider, Metadata

from flags.compiled import CompiledFlag
from flags.errors import FlagsError
from flags.evaluation import AttributeValue, ErrorCode, Reason, Resolution, Subject
from flags.schema import entry_document, entry_key, load_flag_file_text
from flags.snapshot import evaluate
from flags.store import FlagStore

__all__ = ["PROVIDER_NAME", "TrafficSplitProvider"]

PROVIDER_NAME = "trafficsplit"
T = TypeVar("T")
ObjectValue = Sequence[FlagValueType] | Mapping[str, FlagValueType]

_REASONS = {
    Reason.TARGETING_MATCH: OFReason.TARGETING_MATCH,
    Reason.SPLIT: OFReason.SPLIT,
    Reason.DEFAULT: OFReason.DEFAULT,
    Reason.DISABLED: OFReason.DISABLED,
    Reason.ERROR: OFReason.ERROR,
}
_ERRORS = {
    ErrorCode.FLAG_NOT_FOUND: OFErrorCode.FLAG_NOT_FOUND,
    ErrorCode.TARGETING_KEY_MISSING: OFErrorCode.TARGETING_KEY_MISSING,
    ErrorCode.GENERAL: OFErrorCode.GENERAL,
}


class TrafficSplitProvider(AbstractProvider):
    """OpenFeature provider over a :class:`FlagStore`; cheap to call, never raises."""

    def __init__(self, store: FlagStore, *, name: str = PROVIDER_NAME) -> None:
        super().__init__()
        self._store = store
        self._metadata = Metadata(name=name)

    @classmethod
    def from_file(cls, path: str | Path) -> TrafficSplitProvider:
        """A provider over the flags in one JSON/YAML file (the format ``flagctl validate`` reads).

        Read once; raises :class:`~flags.errors.FlagsError` saying what to fix when the file or a
        flag in it is invalid (at start-up, never during evaluation).
        """
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise FlagsError(f"cannot read flag file {path}: {exc}") from exc
        entries = load_flag_file_text(text, filename=path.name)
        store = FlagStore()
        store.sync(
            {entry_key(d, i): entry_document(d) for i, d in enumerate(entries)}, complete=True
        )
        if store.health.rejections:
            problems = "; ".join(r.reason for r in store.health.rejections.values())
            raise FlagsError(f"{path}: {problems}")
        return cls(store)

    @property
    def store(self) -> FlagStore:
        return self._store

    def get_metadata(self) -> Metadata:
        return self._metadata

    # The two types a flag serves.
    def resolve_object_details(
        self,
        flag_key: str,
        default_value: ObjectValue,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[ObjectValue]:
        resolution, flag, error = self._evaluate(flag_key, evaluation_context)
        if error is not None:
            return _failure(default_value, *error)
        value: ObjectValue = default_value
        if resolution.target is not None:
            value = resolution.target.model_dump(mode="json", exclude_none=True)
        return _details(value, resolution, flag)

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        resolution, flag, error = self._evaluate(flag_key, evaluation_context)
        if error is not None:
            return _failure(default_value, *error)
        return _details(resolution.variant or default_value, resolution, flag)

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        return self._mismatch(flag_key, default_value, "boolean")

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[int]:
        return self._mismatch(flag_key, default_value, "integer")

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        return self._mismatch(flag_key, default_value, "float")

    def _mismatch(self, flag_key: str, default_value: T, kind: str) -> FlagResolutionDetails[T]:
        if self._store.snapshot.get(flag_key) is None:
            return _failure(
                default_value, OFErrorCode.FLAG_NOT_FOUND, f"no flag named {flag_key!r}"
            )
        message = (
            f"flag {flag_key!r} serves a model target, not a {kind}: ask get_object_details for "
            "the target or get_string_details for the variant name"
        )
        return _failure(default_value, OFErrorCode.TYPE_MISMATCH, message)

    def _evaluate(
        self, flag_key: str, context: EvaluationContext | None
    ) -> tuple[Resolution, CompiledFlag | None, tuple[OFErrorCode, str] | None]:
        snapshot = self._store.snapshot  # one read: the whole evaluation sees one snapshot
        subject, problem = _subject(context)
        resolution = evaluate(snapshot, flag_key, subject)
        if problem is not None and resolution.error_code is not ErrorCode.FLAG_NOT_FOUND:
            return resolution, None, (OFErrorCode.INVALID_CONTEXT, problem)
        if resolution.error_code is not None:
            code = _ERRORS.get(resolution.error_code, OFErrorCode.GENERAL)
            return resolution, None, (code, resolution.error_message or str(code))
        return resolution, snapshot.get(flag_key), None


def _subject(context: EvaluationContext | None) -> tuple[Subject, str | None]:
    """The sidecar's Subject for an evaluation context; a problem when it cannot be one."""
    if context is None:
        return Subject(""), None
    key = context.targeting_key
    if key is not None and not isinstance(key, str):
        return Subject(""), f"targeting_key must be a string, not {type(key).__name__}"
    # Rules compare scalars; other values (lists, dicts, datetimes) can match no condition, so
    # they are left out exactly as an attribute the sidecar never received.
    attributes: dict[str, AttributeValue] = {
        name: value
        for name, value in context.attributes.items()
        if isinstance(value, str | int | float | bool)
    }
    return Subject(key or "", attributes), None


def _metadata(resolution: Resolution, flag: CompiledFlag | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "revision": resolution.revision,
        "version": str(resolution.revision),
        "exposed": resolution.exposed,
    }
    if resolution.target is not None:
        meta["model"] = resolution.target.model
        meta["model_version"] = resolution.target.version
    if resolution.rule is not None:
        meta["rule"] = resolution.rule
    if flag is not None:
        meta["hashing"] = flag.hashing
    return meta


def _reason(resolution: Resolution, flag: CompiledFlag | None) -> OFReason:
    if (
        resolution.reason is Reason.DEFAULT
        and flag is not None
        and not flag.spec.rules
        and flag.spec.allocation is None
    ):
        return OFReason.STATIC  # nothing in the flag depends on the context
    return _REASONS.get(resolution.reason, OFReason.UNKNOWN)


def _details(
    value: T, resolution: Resolution, flag: CompiledFlag | None
) -> FlagResolutionDetails[T]:
    return FlagResolutionDetails(
        value=value,
        reason=_reason(resolution, flag),
        variant=resolution.variant,
        flag_metadata=_metadata(resolution, flag),
    )


def _failure(default_value: T, code: OFErrorCode, message: str) -> FlagResolutionDetails[T]:
    return FlagResolutionDetails(
        value=default_value, reason=OFReason.ERROR, error_code=code, error_message=message
    )
