"""Which series and labels a PromQL expression reads: enough of PromQL to check a dashboard or a
rule file against what a live ``/metrics`` exports (tests/e2e/test_prometheus.py).

Not a PromQL parser: a tokenizer that knows which identifiers are metric names (not followed by
``(``, not keywords), the label names in ``{...}`` matchers, and the label lists of ``by`` /
``without`` (scoped to the aggregation's argument) and ``on`` / ``ignoring`` / ``group_left`` /
``group_right`` (scoped to the whole expression). Grafana's ``$variables`` may stay in: they only
appear inside strings and ranges, which are skipped. Pure functions, unit-tested in
tests/unit/test_promql_references.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<matchers>\{(?:"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[^}"'])*\})
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:ms|[smhdwy])?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<paren>[()])
  | (?P<other>[,=!~<>+\-*/%^@]+)
    """,
    re.VERBOSE,
)
_MATCHER_LABEL = re.compile(r"""([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)""")
_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
     "topk", "quantile"}
)  # fmt: skip
_GROUPING = frozenset({"by", "without"})
_MATCHING = frozenset({"on", "ignoring", "group_left", "group_right"})
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})


class PromQLSyntaxError(ValueError):
    """The expression has something the tokenizer cannot read, or unbalanced parentheses."""


@dataclass(frozen=True)
class Selector:
    """A series selector: its metric name and the label names its matchers use."""

    name: str
    labels: frozenset[str]


@dataclass(frozen=True)
class Grouping:
    """Label names a ``by`` / ``on`` / ... clause uses, and the metrics they must be found on."""

    clause: str
    labels: frozenset[str]
    metrics: frozenset[str]


@dataclass(frozen=True)
class References:
    selectors: tuple[Selector, ...]
    groupings: tuple[Grouping, ...]

    @property
    def metrics(self) -> frozenset[str]:
        return frozenset(s.name for s in self.selectors)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise PromQLSyntaxError(f"cannot read {expr[position : position + 20]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "ws":
            out.append((kind, match.group()))
        position = match.end()
    return out


def _partners(tokens: list[tuple[str, str]], expr: str) -> dict[int, int]:
    """Index of each parenthesis → index of its partner."""
    stack: list[int] = []
    partners: dict[int, int] = {}
    for i, (kind, text) in enumerate(tokens):
        if kind != "paren":
            continue
        if text == "(":
            stack.append(i)
        elif not stack:
            raise PromQLSyntaxError(f"unbalanced ')' in {expr!r}")
        else:
            j = stack.pop()
            partners[i], partners[j] = j, i
    if stack:
        raise PromQLSyntaxError(f"unbalanced '(' in {expr!r}")
    return partners


def references(expr: str) -> References:
    tokens = _tokens(expr)
    partners = _partners(tokens, expr)
    selectors: dict[int, Selector] = {}  # token index → selector
    clauses: list[tuple[str, frozenset[str], tuple[int, int] | None]] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "matchers":  # a selector without a metric name: {__name__=~"..."}
            selectors[i] = Selector("", frozenset(_MATCHER_LABEL.findall(text)))
        elif kind == "ident" and (text in _GROUPING or text in _MATCHING):
            if following != ("paren", "("):
                if text in _MATCHING and text.startswith("group_"):
                    i += 1
                    continue  # group_left without a label list
                raise PromQLSyntaxError(f"{text} without a label list in {expr!r}")
            close = partners[i + 1]
            labels = frozenset(t for k, t in tokens[i + 2 : close] if k == "ident")
            clauses.append((text, labels, _scope(tokens, partners, i, close)))
            i = close + 1
            continue
        elif kind == "ident" and text in _AGGREGATIONS and following[1] in _GROUPING:
            pass  # sum by (x) (...): the aggregation, not a metric
        elif kind == "ident" and text not in _KEYWORDS and following != ("paren", "("):
            labels: frozenset[str] = frozenset()
            if following[0] == "matchers":
                labels = frozenset(_MATCHER_LABEL.findall(following[1]))
                i += 1
            selectors[i] = Selector(text, labels)
        i += 1
    groupings = tuple(
        Grouping(
            clause,
            labels,
            frozenset(
                s.name
                for at, s in selectors.items()
                if s.name and (span is None or span[0] < at < span[1])
            ),
        )
        for clause, labels, span in clauses
    )
    return References(tuple(selectors.values()), groupings)


def _scope(
    tokens: list[tuple[str, str]], partners: Mapping[int, int], keyword: int, close: int
) -> tuple[int, int] | None:
    """The token span a ``by``/``without`` list applies to (its aggregation's argument);
    None (the whole expression) for vector matching."""
    if tokens[keyword][1] not in _GROUPING:
        return None
    before = tokens[keyword - 1] if keyword else ("", "")
    argument = close + 1 < len(tokens) and tokens[close + 1] == ("paren", "(")
    if before[0] == "ident" and before[1] in _AGGREGATIONS and argument:  # sum by (x) (arg)
        return close + 1, partners[close + 1]
    if before == ("paren", ")"):  # sum (arg) by (x)
        return partners[keyword - 1], keyword - 1
    return None


def unknown_references(
    refs: Iterable[References],
    exported: Mapping[str, frozenset[str]],
    *,
    recorded: Iterable[str] = (),
) -> list[str]:
    """What ``refs`` read that ``exported`` (sample name → label names seen on it) lacks.

    Names in ``recorded`` (recording rules' outputs) are not exported by anyone: they are
    skipped, and so are groupings whose metrics are all recorded."""
    recorded = frozenset(recorded)
    problems: list[str] = []
    for ref in refs:
        for selector in ref.selectors:
            if selector.name in recorded:
                continue
            if not selector.name:
                problems.append(f"a selector without a metric name: {sorted(selector.labels)}")
            elif selector.name not in exported:
                problems.append(f"{selector.name}: not exported")
            elif missing := selector.labels - exported[selector.name] - {"__name__"}:
                problems.append(f"{selector.name}: no label {', '.join(sorted(missing))}")
        for grouping in ref.groupings:
            names = grouping.metrics - recorded
            if not names or not names <= exported.keys():
                continue  # unknown names are reported above
            seen = frozenset().union(*(exported[n] for n in names))
            if missing := grouping.labels - seen:
                problems.append(
                    f"{grouping.clause} ({', '.join(sorted(missing))}): not a label of "
                    f"{', '.join(sorted(names))}"
                )
    return problems


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*(\w+)\s*\)\s*$")


def dashboard_queries(dashboard: Mapping[str, object]) -> list[tuple[str, str]]:
    """(where, PromQL) for every query of a Grafana dashboard: panel targets (rows' nested
    panels included), annotation queries and query variables, ``label_values(m, l)`` read as ``m{l!=""}``."""
    out: list[tuple[str, str]] = []

    def panels(items: object) -> None:
        for panel in items if isinstance(items, list) else []:
            title = f"panel {panel.get('id')} {panel.get('title')!r}"
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((f"{title} ref {target.get('refId')}", str(target["expr"])))
            panels(panel.get("panels"))

    panels(dashboard.get("panels"))
    annotations = dashboard.get("annotations")
    for annotation in annotations.get("list", []) if isinstance(annotations, dict) else []:
        if annotation.get("expr"):
            out.append((f"annotation {annotation.get('name')!r}", str(annotation["expr"])))
    templating = dashboard.get("templating")
    variables = templating.get("list", []) if isinstance(templating, dict) else []
    for variable in variables:
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = str(query.get("query", "") if isinstance(query, dict) else query)
        if match := _LABEL_VALUES.match(text):
            text = f'{match.group(1)}{{{match.group(2)}!=""}}'
        out.append((f"variable {variable.get('name')}", text))
    return out
