"""The flag document: what ops write as JSON (by hand or with ``flagctl``), validated here.

Validation happens once, at the boundary (a source loading a document, ``flagctl`` writing one);
:mod:`flags.compiled` then turns a valid :class:`FlagSpec` into lookup tables for the hot path.
The format is documented with a full example in ``docs/flags.md``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from flags.decode import (
    MAX_FILE_BYTES,
    decode_json,
    decode_yaml,
    document_size_issues,
    encode_json,
    structure_issues,
)
from flags.errors import FlagValidationError
from flags.experiment_plan import ExperimentPlan
from flags.hashing import HashingMode

# Revisions stay below 2^53: exact as a float (Prometheus gauges, JSON in other languages) and far
# below int64. flagctl's epoch revisions (flags.revisions) reach 2^53 only in the year 2242.
MAX_REVISION = (1 << 53) - 1

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Scalar = Union[bool, int, float, str]  # noqa: UP007 (pydantic needs the runtime Union here)
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
SPLIT_TOLERANCE = 1e-6

Operator = Literal["eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class Target(_Strict):
    """What a variant serves: a model name and version, plus optional request parameters."""

    model: NonEmptyStr
    version: NonEmptyStr
    parameters: dict[NonEmptyStr, Scalar] = Field(default_factory=dict)
    # A named backend of the sidecar (`--backend NAME=HOST:PORT`); absent: the default backend.
    backend: Name | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        # Triton versions are integers; accept 2 as well as "2" but store text.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value


class Condition(_Strict):
    """``attribute <op> value``; a missing attribute never matches (whatever the operator)."""

    attribute: NonEmptyStr
    op: Operator
    value: Scalar | list[Scalar]

    @model_validator(mode="after")
    def _value_fits_operator(self) -> Condition:
        is_list = isinstance(self.value, list)
        if self.op in ("in", "not_in") and not is_list:
            raise ValueError(f'operator {self.op!r} needs a list value, e.g. ["a", "b"]')
        if self.op not in ("in", "not_in") and is_list:
            raise ValueError(f"operator {self.op!r} needs a single value, not a list")
        if self.op in ("lt", "lte", "gt", "gte") and isinstance(self.value, bool):
            raise ValueError(f"operator {self.op!r} needs a number or a string, not a boolean")
        return self


class AllOf(_Strict):
    all: list[ConditionNode] = Field(min_length=1)


class AnyOf(_Strict):
    any: list[ConditionNode] = Field(min_length=1)


class NotOf(_Strict):
    not_: ConditionNode = Field(alias="not")


def _condition_kind(value: Any) -> str:
    if isinstance(value, BaseModel):
        return {AllOf: "all", AnyOf: "any", NotOf: "not"}.get(type(value), "condition")
    if isinstance(value, Mapping):
        for kind in ("all", "any", "not"):
            if kind in value:
                return kind
    return "condition"


ConditionNode = Annotated[
    Annotated[Condition, Tag("condition")]
    | Annotated[AllOf, Tag("all")]
    | Annotated[AnyOf, Tag("any")]
    | Annotated[NotOf, Tag("not")],
    Discriminator(_condition_kind),
]


def _check_split(split: Mapping[str, float]) -> None:
    if not split:
        raise ValueError("must name at least one variant")
    total = sum(split.values())
    if abs(total - 100.0) > SPLIT_TOLERANCE:
        raise ValueError(f"percentages must add up to 100 (they add up to {total:g})")


Split = dict[Name, Percent]


class Rule(_Strict):
    """A targeting rule: ``users`` (allow-list) and/or ``when``; serves one variant or a split."""

    name: Name | None = None
    users: list[NonEmptyStr] | None = Field(default=None, min_length=1)
    when: ConditionNode | None = None
    serve: Name | None = None
    split: Split | None = None

    @model_validator(mode="after")
    def _one_matcher_one_outcome(self) -> Rule:
        if self.users is None and self.when is None:
            raise ValueError("a rule needs `users` (an allow-list) or `when` (a condition)")
        if (self.serve is None) == (self.split is None):
            raise ValueError("a rule needs exactly one of `serve` (a variant) or `split`")
        if self.split is not None:
            _check_split(self.split)
        return self


class Allocation(_Strict):
    """Everyone no rule matched: ``coverage`` % are in the experiment, divided by ``split``."""

    coverage: Percent = 100.0
    split: Split

    @field_validator("split")
    @classmethod
    def _split_adds_up(cls, split: Split) -> Split:
        _check_split(split)
        return split


class Ramp(_Strict):
    """A rollout schedule, advanced by the rollout controller while guardrails hold."""

    variant: Name
    steps: list[Annotated[float, Field(gt=0, le=100)]] = Field(min_length=1)
    hold_seconds: Annotated[float, Field(ge=0)] = 600.0
    # rollout: the named rule whose split the ramp edits (None: the allocation's split).
    rule: Name | None = None

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError("steps must strictly increase, e.g. [1, 5, 20, 50, 100]")
        return steps


class Shadow(_Strict):
    """Mirror a sample of requests to another variant without serving its answer."""

    variant: Name
    percent: Percent
    max_concurrency: Annotated[int, Field(ge=1, le=10_000)] = 8
    # How the sidecar compares the two answers (docs/rollouts.md, "Shadow traffic").
    compare: Literal["auto", "label", "argmax", "max_abs_diff"] = "auto"
    output: NonEmptyStr | None = None  # the output tensor to compare (default: see `compare`)
    tolerance: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1e-4  # max_abs_diff mode
    # Shadow health the rollout controller requires before the first ramp step (0 / 1: off).
    min_agreement: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    min_compared: Annotated[int, Field(ge=0, le=1_000_000_000)] = 100


class Golden(_Strict):
    """The golden-set gate: the model's fixed inputs and labels run through both versions
    before the first ramp step (docs/rollouts.md, "Golden-set gate")."""

    # Relative to the model repository, or absolute; default: <model>/golden.npz.
    file: NonEmptyStr | None = None
    max_accuracy_drop: Annotated[float, Field(ge=0, le=1)] = 0.01
    output: NonEmptyStr | None = None  # the output holding the predicted label (default: auto)
    labels: NonEmptyStr = "labels"  # the array of expected labels in the file

    @field_validator("file")
    @classmethod
    def _npz_file(cls, file: str | None) -> str | None:
        if file is not None and ("\x00" in file or not file.endswith(".npz")):
            raise ValueError("must name a .npz file (numpy.savez), e.g. digits/golden.npz")
        return file


class Guardrails(_Strict):
    """When the rollout controller rolls a candidate back (docs/rollouts.md, "Guardrail maths").

    A null rule is off. The long window (``window_seconds``) catches slow leaks; the short
    fast-burn window catches a hard failure in seconds with a higher threshold and a lower
    request floor (at a 5 % step of 200 req/s the candidate sees 10 req/s: 20 requests in 2 s).
    """

    max_error_rate: Annotated[float, Field(ge=0, le=1)] | None = 0.01
    max_p99_latency_ratio: Annotated[float, Field(gt=1)] | None = 1.5
    window_seconds: Annotated[float, Field(gt=0)] = 300.0
    min_requests: Annotated[int, Field(ge=0)] = 100
    # rollout: fast-burn window, relative rule, notification (appended; defaults keep old docs valid).
    short_window_seconds: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 10.0
    short_max_error_rate: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = 0.2
    short_min_requests: Annotated[int, Field(ge=1, le=1_000_000)] = 20
    relative_error_alpha: Annotated[float, Field(gt=0, lt=0.5, allow_inf_nan=False)] | None = 0.01
    notify: Annotated[str, StringConstraints(max_length=2048)] | None = None

    @field_validator("notify")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme, sep, rest = value.partition("://")
        host = rest.split("/", 1)[0]
        if (
            not sep
            or scheme not in ("http", "https")
            or not host
            or any(c.isspace() for c in value)
        ):
            raise ValueError(
                "must be an http:// or https:// webhook URL, e.g. https://hooks.slack.com/..."
            )
        return value

    @model_validator(mode="after")
    def _short_within_long(self) -> Guardrails:
        # Only when set explicitly: an older document with a window under 10 s stays valid.
        if "short_window_seconds" in self.model_fields_set and (
            self.short_window_seconds > self.window_seconds
        ):
            raise ValueError(
                f"guardrails.short_window_seconds ({self.short_window_seconds:g}) must not exceed "
                f"window_seconds ({self.window_seconds:g})"
            )
        return self


class FlagSpec(_Strict):
    """One flag, keyed by the model name apps ask for."""

    key: Name
    description: str = ""
    enabled: bool = True
    revision: Annotated[int, Field(ge=0, le=MAX_REVISION)] = 0
    salt: Annotated[str, StringConstraints(max_length=256)] = ""
    variants: dict[Name, Target] = Field(min_length=1)
    default_variant: Name
    rules: list[Rule] = Field(default_factory=list)
    allocation: Allocation | None = None
    allow_version_pinning: bool = True
    ramp: Ramp | None = None
    shadow: Shadow | None = None
    guardrails: Guardrails | None = None
    golden: Golden | None = None
    experiment: ExperimentPlan | None = None  # flags.experiment_plan: metrics, segments, plan
    # Split hash (flags.hashing): absent means "legacy", so no stored flag moves on upgrade;
    # `flagctl apply` writes the current flagd spec into flags it creates (docs/flags.md).
    hashing: HashingMode | None = None
    updated_at: str | None = None
    updated_by: str | None = None

    @model_validator(mode="after")
    def _variants_exist(self) -> FlagSpec:
        issues = list(self._unknown_variant_issues())
        if issues:
            raise ValueError("; ".join(issues))
        return self

    def _unknown_variant_issues(self) -> list[str]:
        known = set(self.variants)
        hint = f"(variants: {', '.join(sorted(known))})"
        refs: list[tuple[str, str]] = [("default_variant", self.default_variant)]
        for i, rule in enumerate(self.rules):
            if rule.serve is not None:
                refs.append((f"rules.{i}.serve", rule.serve))
            refs += [(f"rules.{i}.split.{name}", name) for name in rule.split or {}]
        if self.allocation is not None:
            refs += [(f"allocation.split.{name}", name) for name in self.allocation.split]
        for section in ("ramp", "shadow"):
            part = getattr(self, section)
            if part is not None:
                refs.append((f"{section}.variant", part.variant))
        issues = [
            f"{path}: unknown variant {name!r} {hint}" for path, name in refs if name not in known
        ]
        if self.ramp is not None and self.ramp.variant == self.default_variant:
            issues.append("ramp.variant: ramp a candidate, not the default variant")
        if self.ramp is not None and self.ramp.rule is not None:  # rollout: the ramp's rule
            named = [r for r in self.rules if r.name == self.ramp.rule]
            if not named or named[0].split is None:
                with_split = sorted(r.name for r in self.rules if r.name and r.split is not None)
                issues.append(
                    f"ramp.rule: no rule named {self.ramp.rule!r} with a split "
                    f"(rules with a split: {', '.join(with_split) or 'none'})"
                )
        if self.shadow is not None and self.shadow.variant == self.default_variant:
            issues.append(
                "shadow.variant: shadowing the default variant would compare it with itself"
            )
        return issues

    def to_document(self) -> dict[str, Any]:
        """The JSON-ready dict, in the documented field names (``not`` rather than ``not_``)."""
        document = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        if self.guardrails is not None:
            # A null guardrail means "off"; dropping it would turn its default back on.
            document["guardrails"] = self.guardrails.model_dump(mode="json")
        return document

    def to_json(self) -> str:
        return json.dumps(self.to_document(), sort_keys=False, separators=(",", ":"))


AllOf.model_rebuild()
AnyOf.model_rebuild()
NotOf.model_rebuild()
Rule.model_rebuild()

_FRIENDLY = {
    "missing": "is required",
    "string_too_short": "must be a non-empty string",
    "extra_forbidden": "is not a known field (check the spelling)",
    "string_pattern_mismatch": "must be a name of letters, digits, '_', '.', '-' (max 128)",
}


def _format_issues(error: Mapping[str, Any]) -> list[str]:
    # Our cross-field checks report several issues in one ValueError, joined by "; ".
    line = _format_issue(error)
    return line.split("; ") if error["type"] == "value_error" else [line]


def _format_issue(error: Mapping[str, Any]) -> str:
    # Pydantic's location holds the discriminator tags too ("condition", "all"): drop them.
    tags = {"condition", "all", "any", "not", "not_"}
    parts = [str(p) for p in error["loc"] if not (isinstance(p, str) and p in tags)]
    if error["loc"] and error["loc"][-1] in ("all", "any", "not"):
        parts.append(str(error["loc"][-1]))
    message = _FRIENDLY.get(error["type"]) or str(error["msg"])
    message = message.removeprefix("Value error, ")
    if not parts and error["type"] == "value_error":
        return message  # cross-field checks already name their own paths
    return f"{'.'.join(parts) or '(document)'}: {message}"


def parse_flag(document: Mapping[str, Any] | str | bytes, *, key: str | None = None) -> FlagSpec:
    """Validate one flag document; ``key`` (the Redis key / file entry) must match its ``key``.

    The one entry point every path uses: the store (Redis and file sources), every ``flagctl``
    verb, and every write after its edit. Limits (size, nesting, finite numbers, int64) are
    checked by :mod:`flags.decode` before any recursive code runs. Raises
    :class:`FlagValidationError` listing every problem with its field path, and nothing else.
    """
    if isinstance(document, str | bytes):
        data: Any = decode_json(document, key=key)
        issues = structure_issues(data)
    else:  # decoded data (from a file, a mutation, code): measured as the JSON a write stores
        data = document
        issues = structure_issues(data)
        issues = issues or document_size_issues(data)
    if issues:
        raise FlagValidationError(issues, key=key)
    try:
        spec = FlagSpec.model_validate(data)
    except ValidationError as exc:
        issues = [line for e in exc.errors() for line in _format_issues(e)]
        raise FlagValidationError(issues, key=key) from exc
    if key is not None and spec.key != key:
        raise FlagValidationError([f"key: is {spec.key!r} but is stored as {key!r}"], key=key)
    return spec


def load_flag_file_text(text: str, *, filename: str = "") -> list[Any]:
    """Parse a JSON or YAML file holding one flag, a list of flags, or ``{"flags": [...]}``.

    Returns the entries undecided: each goes through :func:`parse_flag` like a Redis document,
    so an entry that is not an object gets the same message as such a document in Redis.
    """
    if filename.endswith(".json"):
        data = decode_json(text, limit=MAX_FILE_BYTES)
    else:
        data = decode_yaml(text)
    if isinstance(data, Mapping) and "flags" in data and "key" not in data:
        data = data["flags"]
        if isinstance(data, Mapping):
            data = [{"key": k, **v} if isinstance(v, Mapping) else v for k, v in data.items()]
    if isinstance(data, Mapping):
        data = [data]
    if not isinstance(data, list):
        raise FlagValidationError(["(file): expected a flag object or a list of flag objects"])
    return [dict(d) if isinstance(d, Mapping) else d for d in data]


def entry_key(entry: Any, index: int) -> str:
    """How a file entry is named in messages: its ``key`` when it has a usable one, else ``#i``."""
    if isinstance(entry, Mapping) and isinstance(entry.get("key"), str) and entry["key"]:
        return str(entry["key"])
    return f"#{index}"


def entry_document(entry: Any) -> str:
    """A file entry as the JSON text a store validates (non-finite numbers kept, to be reported)."""
    return encode_json(entry)
