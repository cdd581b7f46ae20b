"""Compile rule conditions into predicates over a subject's attributes.

Attributes arrive as text from gRPC metadata (``x-attr-tier: pro``) or typed from the native API,
so a condition with a numeric value compares numerically when the attribute parses as a number.
A missing attribute never matches, whatever the operator: ``ne``/``not_in`` over an unknown value
would otherwise silently enrol everyone who did not send it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any, cast

from flags.evaluation import AttributeValue
from flags.schema import AllOf, AnyOf, Condition, ConditionNode, NotOf, Scalar

Attributes = Mapping[str, AttributeValue]
Predicate = Callable[[Attributes], bool]

_ORDER = {"lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge}


def _as_number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _normalise(value: object, numeric: bool) -> object:
    """The comparable form of a value: a float for numeric conditions, else text."""
    if numeric:
        return _as_number(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def compile_condition(node: ConditionNode) -> Predicate:
    # Hot path: plain loops rather than all()/any() over a generator, which allocates per call.
    if isinstance(node, AllOf):
        parts = tuple(compile_condition(c) for c in node.all)

        def all_of(attrs: Attributes) -> bool:
            for part in parts:  # noqa: SIM110 (all() over a generator allocates per call)
                if not part(attrs):
                    return False
            return True

        return all_of
    if isinstance(node, AnyOf):
        parts = tuple(compile_condition(c) for c in node.any)

        def any_of(attrs: Attributes) -> bool:
            for part in parts:  # noqa: SIM110 (any() over a generator allocates per call)
                if part(attrs):
                    return True
            return False

        return any_of
    if isinstance(node, NotOf):
        inner = compile_condition(node.not_)
        return lambda attrs: not inner(attrs)
    return _compile_leaf(node)


def _reader(name: str, numeric: bool) -> Callable[[Attributes], object]:
    """Fetch an attribute in the condition's comparable form; None when missing or unusable."""
    if numeric:

        def number(attrs: Attributes) -> object:
            raw = attrs.get(name)
            kind = type(raw)
            if kind is float or kind is int:
                return raw
            return None if raw is None else _as_number(raw)

        return number

    def text(attrs: Attributes) -> object:
        raw = attrs.get(name)
        if raw is None or type(raw) is str:
            return raw
        return _normalise(raw, False)

    return text


def _compile_leaf(cond: Condition) -> Predicate:
    op = cond.op
    values: list[Scalar] = cond.value if isinstance(cond.value, list) else [cond.value]
    numeric = all(_as_number(v) is not None for v in values) and not any(
        isinstance(v, str) for v in values
    )
    wanted = [_normalise(v, numeric) for v in values]
    read = _reader(cond.attribute, numeric)

    if op in ("in", "not_in"):
        members = frozenset(wanted)
        negate = op == "not_in"

        def member(attrs: Attributes) -> bool:
            value = read(attrs)
            return value is not None and (value in members) != negate

        return member

    target = wanted[0]
    if op in ("eq", "ne"):
        negate = op == "ne"

        def equal(attrs: Attributes) -> bool:
            value = read(attrs)
            return value is not None and (value == target) != negate

        return equal

    compare = _ORDER[op]

    def ordered(attrs: Attributes) -> bool:
        value = read(attrs)
        return value is not None and bool(compare(cast(Any, value), cast(Any, target)))

    return ordered
