"""Readiness per flag: is every model version a flag can route to loaded on the backend?

Checked at start and then periodically by the server (:meth:`VersionReadiness.refresh`). A
version that is not ready is logged once (and once more when it comes back), exported as
``trafficsplit_version_ready`` and skipped by the router: its users fall back to the default
variant without a doomed call (outcome ``fallback_not_ready``). When it becomes ready again its
circuit is closed at once, so traffic returns within one check interval of the backend, not
after the breaker's cool-down.

The request path only reads :meth:`is_ready` (one dict lookup).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from flags.compiled import CompiledFlag
from sidecar.backends.base import InferenceBackend

log = logging.getLogger("sidecar.readiness")

Target = tuple[str, str]  # (model, version)


def key_of(model: str, version: str) -> str:
    return f"{model}:{version}"


def flag_targets(
    snapshot: Mapping[str, CompiledFlag], stable: Mapping[str, str] | None = None
) -> set[Target]:
    """Every (model, version) a flag (or a ``--stable`` pin) can route to."""
    targets = {
        (t.model, t.version) for flag in snapshot.values() for t in flag.spec.variants.values()
    }
    targets.update((stable or {}).items())
    return targets


def default_targets(snapshot: Mapping[str, CompiledFlag]) -> set[Target]:
    out = set()
    for flag in snapshot.values():
        target = flag.spec.variants[flag.spec.default_variant]
        out.add((target.model, target.version))
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
        backend: InferenceBackend,
        targets: Iterable[Target],
        *,
        on_ready_again: Callable[[str], None] = lambda key: None,
    ) -> Mapping[str, str]:
        """Check every target (concurrently); returns the not-ready ones with their reason."""
        targets = sorted(set(targets))
        states = await backend.version_states(targets)
        results = [states.get(target, "not reported by the backend") for target in targets]
        unready: dict[str, str] = {}
        for (model, version), reason in zip(targets, results, strict=True):
            key = key_of(model, version)
            if reason is None:
                if key in self._unready:
                    log.info(
                        "model %r version %s is ready again on %s", model, version, backend.name
                    )
                    on_ready_again(key)
                continue
            unready[key] = reason
            if key not in self._unready:
                self.became_unready_total += 1
                log.warning(
                    "model %r version %s, which a flag routes to, is not ready on %s (%s): its "
                    "users fall back to the default variant",
                    model,
                    version,
                    backend.name,
                    reason,
                )
        self._unready = unready
        self._known = {key_of(m, v) for m, v in targets}
        self.checked = True
        return unready
