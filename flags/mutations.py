"""Pure edits ops make to a flag: each takes a spec and returns a new, re-validated one.

They work on the JSON document and re-parse it, so an edit can never produce a flag the sidecars
would reject.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flags.errors import VariantError
from flags.hashing import CURRENT_HASHING, PPM, percent_to_ppm
from flags.schema import FlagSpec, parse_flag


def _check_variant(spec: FlagSpec, variant: str) -> None:
    if variant not in spec.variants:
        known = ", ".join(sorted(spec.variants))
        raise VariantError(f"flag {spec.key!r} has no variant {variant!r} (variants: {known})")


def _rebuild(spec: FlagSpec, doc: dict[str, Any]) -> FlagSpec:
    return parse_flag(doc, key=spec.key)


def ramp(spec: FlagSpec, variant: str, percent: float, *, rule: str | None = None) -> FlagSpec:
    """Give ``variant`` ``percent`` % of a split; the default variant takes the rest.

    The split edited is the named ``rule``'s, else the ``ramp`` section's rule when it ramps this
    variant, else the allocation's. A ramp never widens exposure beyond what the flag targets:
    coverage is unchanged, and a flag whose experiment lives in a rule's split does not get an
    allocation (which would put users outside the segment on the candidate); only a flag with
    no split at all gets one at 100 % coverage. Other candidates keep their share. Ramping the
    default is refused: "ramping" it means ramping the others down.
    """
    _check_variant(spec, variant)
    if variant == spec.default_variant:
        raise VariantError(
            f"{variant!r} is the default variant of {spec.key!r}; ramp a candidate instead"
        )
    if not 0 <= percent <= 100:
        raise VariantError(f"percent must be between 0 and 100, not {percent:g}")
    if rule is None and spec.ramp is not None and spec.ramp.variant == variant:
        rule = spec.ramp.rule
    doc = spec.to_document()
    if rule is not None:
        holder = _rule_with_split(spec, doc, rule)
    elif "allocation" in doc:
        holder = doc["allocation"]
    else:
        in_rules = sorted(r.name or f"#{i}" for i, r in enumerate(spec.rules) if r.split)
        if in_rules:
            raise VariantError(
                f"flag {spec.key!r} has no allocation: its experiment lives in rule split(s) "
                f"{', '.join(in_rules)}; name one with --rule (ramping would otherwise create an "
                "allocation and expose everyone outside the segment)"
            )
        holder = doc.setdefault("allocation", {"coverage": 100.0, "split": {}})
    holder["split"] = _ramped_split(spec, dict(holder.get("split", {})), variant, percent)
    return _rebuild(spec, doc)


def _rule_with_split(spec: FlagSpec, doc: dict[str, Any], name: str) -> dict[str, Any]:
    for rule in doc.get("rules", []):
        if rule.get("name") == name:
            if "split" not in rule:
                raise VariantError(
                    f"rule {name!r} of {spec.key!r} serves one variant; only a rule with a "
                    "split can be ramped"
                )
            return rule  # type: ignore[no-any-return]
    named = sorted(r.name for r in spec.rules if r.name and r.split is not None)
    raise VariantError(
        f"flag {spec.key!r} has no rule named {name!r} (rules with a split: "
        f"{', '.join(named) or 'none'})"
    )


def _ramped_split(
    spec: FlagSpec, split: dict[str, float], variant: str, percent: float
) -> dict[str, float]:
    split[variant] = percent
    others = sum(v for k, v in split.items() if k not in (variant, spec.default_variant))
    # Integer ppm arithmetic so 33.3333 + 66.6667 style shares still add up to exactly 100.
    rest_ppm = PPM - percent_to_ppm(percent) - percent_to_ppm(others)
    if rest_ppm < 0:
        raise VariantError(
            f"cannot give {variant!r} {percent:g} %: other candidates already hold {others:g} %"
        )
    split[spec.default_variant] = rest_ppm / (PPM // 100)
    return split


def share(spec: FlagSpec, variant: str, *, rule: str | None = None) -> float:
    """``variant``'s share (%) of the split a ramp edits (0 when it is absent)."""
    if rule is None and spec.ramp is not None and spec.ramp.variant == variant:
        rule = spec.ramp.rule
    if rule is not None:
        split = next((r.split for r in spec.rules if r.name == rule), None) or {}
    else:
        split = spec.allocation.split if spec.allocation else {}
    return float(split.get(variant, 0.0))


def promote(spec: FlagSpec, variant: str) -> FlagSpec:
    """``variant`` becomes the default and the experiment ends: everyone is on it.

    Splits and the allocation are removed and the ``ramp`` section with them (its job is done);
    allow-list rules serving another variant are dropped too, so "everyone" means everyone.
    The flag is enabled. Rules that serve the new default stay (they are harmless).
    """
    _check_variant(spec, variant)
    doc = spec.to_document()
    doc["default_variant"] = variant
    doc["enabled"] = True
    doc.pop("allocation", None)
    doc.pop("ramp", None)
    doc["rules"] = [
        r for r in doc.get("rules", []) if "split" not in r and r.get("serve") == variant
    ]
    shadow = doc.get("shadow")
    if shadow is not None and shadow.get("variant") == variant:
        doc.pop("shadow")  # shadowing the default would compare it with itself
    return _rebuild(spec, doc)


def _all_to_default(split: dict[str, float], default: str) -> dict[str, float]:
    return {**{name: 0.0 for name in split}, default: 100.0}


def rollback(spec: FlagSpec) -> FlagSpec:
    """Everyone on the default variant now: kill switch on and every split back to 0 %.

    Zeroing the splits too means a later ``enable`` resumes allow-lists (dogfooding) but does not
    silently re-expose users to the candidate: that takes a new ``ramp``.
    """
    doc = spec.to_document()
    doc["enabled"] = False
    default = spec.default_variant
    if "allocation" in doc:
        doc["allocation"]["split"] = _all_to_default(doc["allocation"]["split"], default)
    for rule in doc.get("rules", []):
        if "split" in rule:
            rule["split"] = _all_to_default(rule["split"], default)
    return _rebuild(spec, doc)


def set_enabled(spec: FlagSpec, enabled: bool) -> FlagSpec:
    doc = spec.to_document()
    doc["enabled"] = enabled
    return _rebuild(spec, doc)


def allow(spec: FlagSpec, variant: str, users: Iterable[str]) -> FlagSpec:
    """Add users to the allow-list rule serving ``variant`` (created first in order if missing).

    A user is in at most one allow-list of this flag: adding them here removes them elsewhere,
    so the answer to "what does alice get?" never depends on rule order.
    """
    _check_variant(spec, variant)
    wanted = [u for u in dict.fromkeys(users) if u]
    if not wanted:
        raise VariantError("name at least one user id")
    doc = spec.to_document()
    rules: list[dict[str, Any]] = doc.setdefault("rules", [])
    name = f"allow-{variant}"
    for rule in rules:
        if "users" in rule and "when" not in rule and rule.get("serve") != variant:
            rule["users"] = [u for u in rule["users"] if u not in wanted]
    rules[:] = [r for r in rules if r.get("users") != []]
    target = next((r for r in rules if r.get("name") == name), None)
    if target is None:
        rules.insert(0, {"name": name, "users": wanted, "serve": variant})
    else:
        target["users"] = list(dict.fromkeys([*target["users"], *wanted]))
    return _rebuild(spec, doc)


def with_revision(spec: FlagSpec, revision: int, *, at: str, by: str) -> FlagSpec:
    doc = spec.to_document()
    doc.update(revision=revision, updated_at=at, updated_by=by)
    return _rebuild(spec, doc)


def diff(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """Human-readable changes between two documents: "path: old -> new" (bookkeeping omitted)."""
    if before is None:
        return ["created"]
    ignored = {"revision", "updated_at", "updated_by"}
    old = {k: v for k, v in _flatten(before).items() if k.split(".")[0] not in ignored}
    new = {k: v for k, v in _flatten(after).items() if k.split(".")[0] not in ignored}
    lines = []
    for path in sorted(old.keys() | new.keys()):
        if old.get(path, _ABSENT) != new.get(path, _ABSENT):
            lines.append(
                f"{path}: {_show(old.get(path, _ABSENT))} -> {_show(new.get(path, _ABSENT))}"
            )
    return lines


_ABSENT = object()


def _show(value: object) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}.{i}"))
        return out
    return {prefix: value}


def settle_hashing(spec: FlagSpec, stored: FlagSpec | None, *, exists: bool) -> FlagSpec:
    """The split hash an applied document gets, so that applying a file never moves users.

    A document that names ``hashing`` keeps it. One that does not inherits the stored flag's
    (``legacy`` when the stored document has none, or when it is unreadable); a flag created from
    it (``exists`` False: nothing stored under its key) gets the current flagd spec.
    """
    if spec.hashing is not None:
        return spec
    if exists:
        inherited = stored.hashing if stored is not None else None
        return spec if inherited is None else spec.model_copy(update={"hashing": inherited})
    return spec.model_copy(update={"hashing": CURRENT_HASHING})
