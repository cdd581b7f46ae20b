"""Decoding flag documents (JSON from Redis or a file, YAML from a file) within fixed limits.

Every way a flag enters the system goes through here before any recursive code runs (the JSON
and YAML parsers, pydantic, :mod:`flags.conditions`), so that nothing a user can store makes a
sidecar or ``flagctl`` crash, hang or print a traceback. The limits (documented in docs/flags.md):

* a flag document is at most :data:`MAX_DOCUMENT_BYTES` (1 MiB) as stored, a file at most
  :data:`MAX_FILE_BYTES`;
* lists and objects nest at most :data:`MAX_DEPTH` deep, rule conditions at most
  :data:`MAX_CONDITION_DEPTH` (``all``/``any``/``not`` levels);
* numbers are finite (no NaN, no infinity, no ``1e999`` overflowing to infinity, no YAML
  ``.inf``) and integers fit in int64 (protobuf's int64 request parameters, Prometheus gauges);
* a value is JSON data: text, number, boolean, null, list, or object with text keys.

Non-finite numbers and big integers are *decoded* (not rejected by the parser) and reported by
:func:`structure_issues` with their field path, so a document gets the same message whether it
came as JSON text from Redis, as JSON or YAML from a file, or as a dict from code.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from datetime import date
from typing import Any

import yaml

from flags.errors import FlagValidationError

MAX_DOCUMENT_BYTES = 1 << 20
MAX_FILE_BYTES = 8 << 20
MAX_DEPTH = 100
MAX_CONDITION_DEPTH = 32
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
# Values an expanded document may hold; bounds YAML alias expansion ("billion laughs"). A JSON
# document within MAX_DOCUMENT_BYTES cannot reach it (every value takes at least two bytes).
MAX_VALUES = MAX_DOCUMENT_BYTES // 2
MAX_ISSUES = 20

_TOO_BIG = 1 << 64  # stands for an integer literal too long to convert (reported as out of range)
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)
_CONDITION_KINDS = ("all", "any", "not")


def too_deep_issue() -> str:
    return f"(document): nested more than {MAX_DEPTH} levels deep"


def _too_large_issue(limit: int, what: str) -> str:
    return f"(document): {what} is larger than {limit} bytes ({limit >> 20} MiB), the limit"


def encode_json(data: Any) -> str:
    """Compact JSON, keeping NaN/infinity literals so the validator reports them by path."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def _parse_int(text: str) -> int:
    # Python refuses to convert integers of more than 4,300 digits; anything over 40 is out of
    # int64 anyway, so stand in an out-of-range value and let structure_issues say so.
    return int(text) if len(text) <= 40 else _TOO_BIG


def decode_json(
    document: str | bytes, *, key: str | None = None, limit: int = MAX_DOCUMENT_BYTES
) -> Any:
    """JSON text to Python data, refusing oversized or over-nested text before parsing it."""
    if len(document) > limit:
        what = "a flag document" if limit == MAX_DOCUMENT_BYTES else "the file"
        raise FlagValidationError([_too_large_issue(limit, what)], key=key)
    try:
        text = document.decode() if isinstance(document, bytes) else document
    except UnicodeDecodeError as exc:
        raise FlagValidationError([f"(document): not valid JSON ({exc})"], key=key) from exc
    if _json_depth(text) > MAX_DEPTH:
        raise FlagValidationError([too_deep_issue()], key=key)
    try:
        return json.loads(text, parse_constant=float, parse_float=float, parse_int=_parse_int)
    except (ValueError, RecursionError) as exc:
        raise FlagValidationError([f"(document): not valid JSON ({exc})"], key=key) from exc


def _json_depth(text: str) -> int:
    """Deepest bracket nesting outside strings (a linear scan; the text may be invalid JSON)."""
    depth = deepest = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def decode_yaml(text: str) -> Any:
    """YAML text to JSON-like data; depth and alias expansion are checked on the event stream
    (PyYAML's parser is iterative, its composer recursive) before any object is built."""
    if len(text) > MAX_FILE_BYTES:
        raise FlagValidationError([_too_large_issue(MAX_FILE_BYTES, "the file")])
    try:
        _check_yaml_events(text)
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise FlagValidationError([f"(document): not valid YAML ({exc})"]) from exc
    issues = list(_yaml_type_issues(data))
    if issues:
        raise FlagValidationError(issues[:MAX_ISSUES])
    return data


class _YamlLimit(ValueError):
    pass


def _check_yaml_events(text: str) -> None:
    anchors: dict[str, int] = {}
    frames: list[list[Any]] = []  # [anchor, values inside] per open collection
    depth = expanded = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        size = 0
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _YamlLimit(f"nested more than {MAX_DEPTH} levels deep")
            frames.append([event.anchor, 1])
            expanded += 1
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            anchor, size = frames.pop()
            if anchor:
                anchors[anchor] = size
        elif isinstance(event, yaml.ScalarEvent):
            size = 1
            expanded += 1
            if event.anchor:
                anchors[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            size = anchors.get(event.anchor or "", 1)
            expanded += size
        if size and frames:
            frames[-1][1] += size
        if expanded > MAX_VALUES:
            raise _YamlLimit(f"expands to more than {MAX_VALUES} values (aliases)")


def _yaml_type_issues(data: Any) -> Iterator[str]:
    """YAML can hold dates, sets and non-text keys; a flag file must be plain JSON data."""
    for path, value, _ in _walk(data):
        if isinstance(value, date):
            yield f'{path or "(document)"}: a date is not allowed here; quote it ("{value}")'
        elif isinstance(value, Mapping):
            for k in value:
                if not isinstance(k, str):
                    yield f"{path or '(document)'}: key {k!r} must be text; quote it"


def _walk(data: Any) -> Iterator[tuple[str, Any, int]]:
    """Every value with its dotted path, iteratively, visiting at most MAX_VALUES values."""
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    seen = 0
    while stack:
        path, value, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise FlagValidationError([f"(document): holds more than {MAX_VALUES} values"])
        yield path, value, depth
        if depth >= MAX_DEPTH:
            continue
        if isinstance(value, Mapping):
            items: list[tuple[str, Any]] = [(str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            items = [(str(i), v) for i, v in enumerate(value)]
        else:
            continue
        for name, child in reversed(items):
            stack.append((f"{path}.{name}" if path else name, child, depth + 1))


def structure_issues(data: Any) -> list[str]:
    """What makes ``data`` unacceptable as a flag before its schema is even looked at."""
    if not isinstance(data, Mapping):
        return ["(document): must be a JSON object"]
    issues: list[str] = []
    for path, problem in _value_problems(data):
        issue = f"{path or '(document)'}: {problem}"
        if issue == too_deep_issue():
            return [issue]  # alone, as the JSON text check (which stops before parsing) says it
        if len(issues) < MAX_ISSUES:
            issues.append(issue)
    issues += _condition_depth_issues(data)
    return issues


def _value_problems(data: Any) -> Iterator[tuple[str, str]]:
    for path, value, depth in _walk(data):
        if depth >= MAX_DEPTH and isinstance(value, Mapping | list):
            yield "", f"nested more than {MAX_DEPTH} levels deep"
            return
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                yield path, "must be a finite number (NaN and infinity are not allowed)"
        elif isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                yield path, "integer out of range (must be between -2^63 and 2^63-1)"
        elif isinstance(value, Mapping):
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                yield path, f"key {bad[0]!r} must be text"
        elif not isinstance(value, list):
            yield path, f"a {type(value).__name__} is not JSON data"


def _condition_depth_issues(data: Mapping[str, Any]) -> list[str]:
    rules = data.get("rules")
    if not isinstance(rules, list):
        return []
    issues = []
    for i, rule in enumerate(rules):
        if isinstance(rule, Mapping) and _condition_depth(rule.get("when")) > MAX_CONDITION_DEPTH:
            issues.append(
                f"rules.{i}.when: conditions nest more than {MAX_CONDITION_DEPTH} levels "
                "(all/any/not); flatten them"
            )
    return issues


def _condition_depth(node: Any) -> int:
    deepest = 0
    stack: list[tuple[Any, int]] = [(node, 1)]
    while stack:
        current, depth = stack.pop()
        if not isinstance(current, Mapping):
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_CONDITION_DEPTH:
            return deepest
        for kind in _CONDITION_KINDS:
            child = current.get(kind)
            children = child if isinstance(child, list) else [child]
            stack += [(c, depth + 1) for c in children if isinstance(c, Mapping)]
    return deepest


def document_size_issues(data: Any) -> list[str]:
    """The 1 MiB limit measured on the compact JSON a write would store."""
    if len(encode_json(data).encode()) > MAX_DOCUMENT_BYTES:
        return [_too_large_issue(MAX_DOCUMENT_BYTES, "a flag document")]
    return []
