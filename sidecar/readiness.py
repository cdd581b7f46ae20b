"""Readiness per flag: is every model version a flag can route to loaded on its backend?

Checked at start and then periodically by the server (:meth:`VersionReadiness.refresh`). A
version that is not ready is logged once (and once more when it comes back), exported as
``trafficsplit_version_ready`` and skipped by the router: its users fall back to the default
variant without a doomed call (outcome ``fallback_not_ready``). When it becomes ready again its
circuit is closed at once, so traffic returns within one check interval of the backend, not
after the breaker's cool-down.

Targets are (backend name, model, version); "" names the default backend. The request path only
reads :meth:`is_ready` (one dict lookup, by the hop's key).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping

from flags.compiled import CompiledFlag
from sidecar.backends.base import InferenceBackend
from sidecar.plan import target_key

log = logging.getLogger("sidecar.readiness")

Target = tuple[str, str, str]  # (backend name, "" for the default; model; version)


def flag_targets(
    snapshot: Mapping[str, CompiledFlag], stable: Mapping[str, str] | None = None
) -> set[Target]:
    """Every (backend, model, version) a flag (or a ``--stable`` pin) can route to."""
    targets = {
        (t.backend or "", t.model, t.version)
        for flag in snapshot.values()
        for t in flag.spec.variants.values()
    }
    targets.update(("", model, version) for model, version in (stable or {}).items())
    return targets


def default_targets(snapshot: Mapping[str, CompiledFlag]) -> set[Target]:
    out = set()
    for flag in snapshot.values():
        t = flag.spec.variants[flag.spec.default_variant]
        out.add((t.backend or "", t.model, t.version))
    return out


class VersionReadiness:
    def __init__(self) -> None:
        self._unready: dict[str, str] = {}
        self._known: set[str] = set()
        self.became_unready_total = 0
        self.checked = False

    def is_ready(self, key: str) -> bool:
        return key not in self._unready

    def unready(self) -> Mapping[str, str]:
        return dict(self._unready)

    def known(self) -> set[str]:
        return set(self._known)

    async def refresh(
        self,
        backends: Mapping[str, InferenceBackend],
        targets: Iterable[Target],
        *,
        on_ready_again: Callable[[str], None] = lambda key: None,
    ) -> Mapping[str, str]:
        """Check every target on its backend (backends concurrently); returns the keys of the
        not-ready ones with their reason. A target naming an unconfigured backend is not ready."""
        by_backend: dict[str, list[tuple[str, str]]] = {}
        for backend, model, version in sorted(set(targets)):
            by_backend.setdefault(backend, []).append((model, version))
        names = sorted(by_backend)
        answers = await asyncio.gather(
            *(_states(backends.get(name), name, by_backend[name]) for name in names)
        )
        unready: dict[str, str] = {}
        known: set[str] = set()
        for name, states in zip(names, answers, strict=True):
            engine = backends[name].name if name in backends else name
            for (model, version), reason in states.items():
                key = target_key(name, model, version)
                known.add(key)
                if reason is None:
                    if key in self._unready:
                        log.info("model %r version %s is ready again on %s", model, version, engine)
                        on_ready_again(key)
                    continue
                unready[key] = reason
                if key not in self._unready:
                    self.became_unready_total += 1
                    log.warning(
                        "model %r version %s, which a flag routes to, is not ready on %s (%s): "
                        "its users fall back to the default variant",
                        model,
                        version,
                        engine if not name else f"backend {name!r}",
                        reason,
                    )
        self._unready = unready
        self._known = known
        self.checked = True
        return unready


async def _states(
    backend: InferenceBackend | None, name: str, targets: list[tuple[str, str]]
) -> Mapping[tuple[str, str], str | None]:
    if backend is None:
        reason = f"backend {name!r} is not configured (start the sidecar with --backend {name}=HOST:PORT)"
        return {target: reason for target in targets}
    states = await backend.version_states(targets)
    return {target: states.get(target, "not reported by the backend") for target in targets}
